"""The Python echo service the benchmark runs under charond."""

import charon

for request in charon.Service():
    request.respond(request.body)
