"""Ray start-up for the driver: join a cluster (`cluster.address`, e.g. `auto`) or start a local one."""

from __future__ import annotations

from rltune.config.schema import ClusterConfig


def ensure_ray(c: ClusterConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if c.address:
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        return
    # A local Ray sized for what the recipe asks for (+1 CPU of headroom for the driver's own tasks).
    need = c.train_ranks * c.cpus_per_rank
    if c.placement == "disaggregated" or not c.train_ranks:
        need += c.rollout_workers * c.cpus_per_worker
    # address="local": always a fresh local instance, never a cluster that a stale /tmp/ray file points to.
    ray.init(address="local", num_cpus=max(2, int(need + 0.999) + 1), include_dashboard=False, log_to_driver=False)
