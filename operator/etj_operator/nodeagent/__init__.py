"""The node agent: one per GPU node (a DaemonSet), it enforces each job's GPU power limits and reports them.

The operator decides (a job's per-GPU limit: ``spec.energy.power.limitWatts`` in mode Fixed, the throttle in
``status.control.powerLimitWattsPerGPU``); the agent learns from the kubelet's PodResources API which pod holds
which GPU, applies each job's limit to exactly the GPUs of that job's pods on its node (jobs known by UID), puts
every other GPU back to its default limit, and exports the limits it applied as DCGM-compatible metrics.
docs/node-agent.md describes it. Modules:

* :mod:`.records`: the records (GPUs, allocations, pods, intents, decisions); pure.
* :mod:`.plan`: the decision, GPU by GPU; pure.
* :mod:`.intent`: API objects as records (a job's intent, a pod's controller); pure.
* :mod:`.podresources`: the kubelet's ``v1.PodResourcesLister`` client and server, with their wire codec.
* :mod:`.gpus`: the GPU backends (NVML, simulated).
* :mod:`.kube`: the API reads, through :class:`~etj_operator.kubeapi.KubeApi`.
* :mod:`.metrics`: the /metrics text and its HTTP server.
* :mod:`.agent`: the loop.
* :mod:`.command`: ``etj node-agent``.
"""
