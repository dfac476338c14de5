"""The host side: what runs on the machine that spawns relays (one process per room).

Spawners and process handles (`spawner.py`), cgroup caps per relay (`cgroups.py`,
`capped_spawner.py`), the zygote fork template and its spawner (`template.py`, `zygote.py`),
and the warm pool of standby relays (`warm_pool.py`, `standby.py`). It imports the layers below
(protocol, server, agent), never the control plane above it.
"""
