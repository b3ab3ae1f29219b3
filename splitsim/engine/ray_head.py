"""``ray start`` for a Ray head that splitsim starts on loopback (a run's own head,
engine/local_ray.py), without the three processes such a head never uses. Run as
``python -m splitsim.engine.ray_head start --head ...``; every argument is ``ray start``'s.

- No Ray Client server. ``ray start`` starts one whenever Ray Client's dependencies are
  installed, and its port option takes no 0 to say "none": here it is told that Ray Client
  cannot be served, under the name Ray 2.55 asks by or the older one (a Ray that asks by
  neither gets a free port for the server, as before). A run's driver joins its head by the
  GCS address, never through ``ray://``. It was also one more listening socket.
- No autoscaler monitor (``--no-monitor``, passed by local_ray): one fixed node has nothing
  to scale.
- No log monitor (``--include-log-monitor=false``, passed by local_ray): every driver joins
  with ``log_to_driver=False``, so nothing reads what it would forward. Each process still
  writes its own log file in the head's folder.

Measured on the 2-core machine, CPU seconds of the head's whole process group (a cgroup) from
its start until 6 s after it was up, one CPU: 5.0-6.7 s with all three (four heads), 3.4-3.8 s
without them (three heads); nine processes against six.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    import ray.scripts.scripts as ray_cli

    # ``ray start`` asks this whether Ray Client can be served, and starts its server when it
    # can (ray 2.55: ``get_ray_client_dependency_error``; older releases:
    # ``check_ray_client_dependencies_installed``).
    if hasattr(ray_cli, "get_ray_client_dependency_error"):
        ray_cli.get_ray_client_dependency_error = lambda: "not served by a splitsim head"
    elif hasattr(ray_cli, "check_ray_client_dependencies_installed"):
        ray_cli.check_ray_client_dependencies_installed = lambda: False
    elif not any(arg.startswith("--ray-client-server-port") for arg in argv):
        # a Ray that asks neither starts the server: on a free port, not on Ray's fixed 10001,
        # which a second head on the machine would fail to take
        from splitsim.engine.deployment import free_port

        argv = [*argv, f"--ray-client-server-port={free_port()}"]
    sys.argv = ["ray", *argv]
    ray_cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
