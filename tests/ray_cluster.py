"""A Ray cluster of several nodes on this machine, for the tests (`ray.cluster_utils.Cluster`:
each node is its own raylet with its own object store, as on separate machines, and objects
between them go through Ray's object transfer). Run as a script:

    python tests/ray_cluster.py NODES CPUS_PER_NODE

It starts a head node with no CPUs (so every runner lands on a worker node) and NODES worker
nodes, prints one JSON line {"address": ..., "nodes": [node ids of the workers]}, then reads
commands from stdin, one per line: "nodes" prints the JSON list of the live nodes' ids,
"free_cpus" [CPUs no actor holds, CPUs] (after up to 10 s for them all to be freed), "kill" kills the head
node's processes at once (its GCS: a lost cluster, to the runs using it) and prints "killed";
EOF or "stop" shuts the cluster (what is left of it) down and exits.
"""

import contextlib
import json
import os
import signal
import sys
import time

from ga3c.procs import alive, descendants


def main(nodes: int, cpus: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, include_dashboard=False))
    workers = [cluster.add_node(num_cpus=cpus) for _ in range(nodes)]
    cluster.wait_for_nodes()
    started = descendants(os.getpid())  # pid: Proc of each process of the cluster seen alive
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        print(json.dumps({"address": cluster.address,
                          "nodes": [w.node_id for w in workers]}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stop":
                break
            if command == "kill":  # the head node (GCS, raylet) at once; the rest at "stop"
                started.update(descendants(os.getpid()))
                ray.shutdown()
                cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
                print(json.dumps("killed"), flush=True)
            elif command == "nodes":
                print(json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"]]), flush=True)
            elif command == "free_cpus":  # CPUs no actor holds, once they are all free
                total = ray.cluster_resources().get("CPU", 0)
                for _ in range(100):
                    if ray.available_resources().get("CPU", 0) >= total:
                        break
                    time.sleep(0.1)
                print(json.dumps([ray.available_resources().get("CPU", 0), total]),
                      flush=True)
    finally:
        started.update(descendants(os.getpid()))
        ray.shutdown()
        with contextlib.suppress(Exception):  # after a "kill": the worker nodes still go
            cluster.shutdown()
        # What a raylet started (its dashboard and runtime-env agents) outlives the raylet
        # when that is killed, hanging on to the dead GCS: stopped by id, as seen alive.
        for pid, proc in started.items():
            if alive(pid, proc.start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
