"""What the test suite (tests/) and the benchmark (bench/) share: the combinations of answers
and rendering one, the servers they run against, the databases on them, and HTTP requests to a
served project."""
