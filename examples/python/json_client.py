"""Calls the JSON service of ``json_service.py``: one call, then a batch
of several functions in parallel, printing each answer or fault.

    python3 json_client.py [--run-dir DIR] 1 2 3 4
"""

import argparse
import json
import sys

import charon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="charond's run dir [default: as charon finds it]")
    ap.add_argument("numbers", nargs="*", type=float, default=[1, 2, 3, 4])
    args = ap.parse_args()
    body = json.dumps({"numbers": args.numbers}).encode()

    # One call.
    answer = json.loads(charon.call("stats.mean.1.JSON", body, run_dir=args.run_dir))
    print(f"mean: {answer['result']}")

    # Several at once, from one thread, under one timeout clock.
    client = charon.Client(run_dir=args.run_dir, timeout=4.0)
    batch = client.batch()
    ids = {batch.add(f"stats.{f}.1.JSON", body): f for f in ("sum", "mean", "median")}
    batch.wait_all()
    failed = 0
    for rid, function in ids.items():
        try:
            print(f"{function}: {json.loads(batch.result(rid))['result']}")
        except charon.ServiceFault as e:
            print(f"{function}: fault {e.code}: {e.text}")
        except charon.CharonError as e:
            print(f"{function}: failed: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
