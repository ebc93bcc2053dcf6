"""A small JSON service: ``stats.mean.1.JSON`` and ``stats.sum.1.JSON``.

Request: a JSON object ``{"numbers": [1, 2, 3]}``. Answer: a JSON object
``{"function": "mean", "result": 2.0, "count": 3}``. A body that is not
such an object is answered with fault 1 (DESERIALIZATION_FAILED) or 4
(INVALID_ARGUMENT), an unknown function with fault 2 (UNKNOWN_FUNCTION):
PROTOCOL.md section 4.1's reserved codes, which any client can act on.

Serve it as the wildcard ``stats..1.JSON`` (every function of ``stats``
version 1), with a config file ``stats..1.JSON.toml`` in charond's config
dir::

    exec = ["python3", "/path/to/examples/python/json_service.py"]

or by hand: ``CHARON_ACCEPT_SOCKET=/tmp/stats.sock python3 json_service.py``.
"""

import json

import charon

DESERIALIZATION_FAILED, UNKNOWN_FUNCTION, INVALID_ARGUMENT = 1, 2, 4

FUNCTIONS = {
    "sum": sum,
    "mean": lambda xs: sum(xs) / len(xs),
}


def answer(request: charon.Request) -> None:
    compute = FUNCTIONS.get(request.function)
    if compute is None:
        request.fault(UNKNOWN_FUNCTION, f"no function {request.function!r}; "
                      f"try one of {', '.join(sorted(FUNCTIONS))}")
        return
    try:
        args = json.loads(request.body)
    except ValueError as e:
        request.fault(DESERIALIZATION_FAILED, f"the body is not JSON: {e}")
        return
    numbers = args.get("numbers") if isinstance(args, dict) else None
    if (not isinstance(numbers, list) or not numbers
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       for x in numbers)):
        request.fault(INVALID_ARGUMENT, '"numbers" must be a non-empty list of numbers')
        return
    result = {"function": request.function, "result": compute(numbers),
              "count": len(numbers)}
    request.respond(json.dumps(result))


def main() -> None:
    for request in charon.Service():
        answer(request)


if __name__ == "__main__":
    main()
