"""The lab's node agent: a kubelet stand-in that runs pods as local processes.

The one stand-in of the lab: there is no container runtime on these machines. Run as its
own process, ``python -m tests.lab.nodeagent --kubeconfig ADMIN_KUBECONFIG --config
agent.json``, it registers the configured Nodes, keeps them Ready (a Lease in
``kube-node-lease`` renewed every 10 s, the Ready condition's heartbeat every 30 s), runs
every pod the scheduler binds to them, serves the kubelet endpoint on ``<node>:10250`` and
the cluster DNS, and prints ``ready {"hooks": "http://127.0.0.1:PORT"}`` when its Nodes are
registered. ``agent.json``::

    {"workdir": DIR, "bridge": "ttlab0", "subnet": "10.200.0.0/16",
     "gateway": "10.200.0.1", "apiserver": {"host": "10.200.0.1", "port": 443},
     "clusterDomain": "cluster.local", "dns": {"address": "10.200.0.2"},
     "hooks": {"port": 0},
     "restartBackoff": {"initialSeconds": 10, "maxSeconds": 300},   # optional
     "nodes": [{"name", "address", "podCIDR", "labels", "taints", "capacity",
                "allocatable" (optional, = capacity)}],
     "images": [{"prefix", "entrypoint", "cmd", "workingDir", "user", "env"}]}

Test hooks (:class:`tests.lab.nodeagent.client.NodeAgentClient`): reclaim a node (cordon,
evictions with the pods' grace periods, then the Node deleted), lose a node (SIGKILL now,
Node deleted, the pod GC deletes its pods), add a node, signal one container.

Modules: :mod:`.agent` (nodes, leases, watches, hooks), :mod:`.pods` (one thread per pod:
containers, restarts, probes, status, deletion), :mod:`.shim` (namespaces, mounts,
identity, exec), :mod:`.volumes`, :mod:`.net`, :mod:`.cgroups`, :mod:`.dns`,
:mod:`.kubelet` (log endpoint), :mod:`.spec` and :mod:`.status` (pure kubelet rules).

How it differs from a kubelet with a container runtime:

- **No images, no rootfs.** The host filesystem is every container's root filesystem. An
  image reference maps, by the longest matching prefix (registry host and ``library/``
  ignored), to a configured local environment (entrypoint, cmd, workingDir, user, env —
  e.g. ``tidetune/trainer`` → the project's venv). An unknown image is
  ``ErrImagePull``/``ImagePullBackOff`` and the pod stays Pending. ``imagePullPolicy``
  and pull secrets are ignored; ``imageID`` is ``lab://<image>``, container IDs
  ``lab://<random>``.
- **Mount points are created on the host.** Bind mounts need an existing target: a missing
  ``mountPath`` (or termination-message path) is created on the host as an empty directory
  or file and left there. ``readOnlyRootFilesystem`` is not enforced; ``subPath`` works
  for directories of the volume only (missing ones are created, as the kubelet does).
- **Namespaces:** a network namespace per pod (shared by its containers), and per
  *container* a private mount and UTS namespace. No PID, IPC or user namespace: containers
  see the host's processes, the main process is not PID 1 (so SIGTERM kills a process that
  has no handler, where a container's PID 1 would ignore it), ``shareProcessNamespace``
  is ignored. Exec probes enter the container's net, UTS and mount namespaces.
- **Security:** ``runAsUser``/``runAsGroup``/``fsGroup``/``supplementalGroups``,
  ``runAsNonRoot`` (the kubelet's checks and messages) and
  ``allowPrivilegeEscalation: false`` (no_new_privs) are applied; capabilities, seccomp,
  AppArmor/SELinux, ``privileged`` and ``procMount`` are not. The host's users are the
  image's users (``/etc/passwd`` of the host).
- **Resources:** ``limits.memory`` is enforced with a memory cgroup per container (cgroup
  v2 where its memory controller is writable, else v1) and an OOM kill is reported as
  ``OOMKilled``; with no writable cgroup hierarchy there is no limit and no OOMKilled.
  CPU, ephemeral-storage and extended resources (``nvidia.com/gpu``) are only advertised
  and scheduled, not enforced or provided: no GPU device is injected.
- **Volumes:** configMap, secret, emptyDir (Memory → tmpfs), downwardAPI, projected
  (ServiceAccount tokens from the TokenRequest API bound to the pod, rotated at 80 % of
  their lifetime; kube-root-ca.crt; the namespace) and hostPath. Secrets are written to
  the agent's work directory, not to a tmpfs. No PersistentVolumeClaims, CSI, ephemeral or
  image volumes (the pod stays ContainerCreating with a FailedMount event).
- **Networking:** pods on one L2 bridge, addressed from their node's ``podCIDR``; no
  kube-proxy, so Service ClusterIPs do not route: the lab DNS answers a Service name with
  its endpoints' pod IPs (also for non-headless Services; a client must use the
  ``targetPort``). No NetworkPolicy, no hostPort, no service-link environment variables
  other than ``KUBERNETES_*`` (which point at the API server's real address).
  ``hostNetwork`` pods share the host's network namespace and get the node address.
- **Containers:** init containers run in order; sidecars (init containers with
  ``restartPolicy: Always``) as the kubelet runs them: the next init container starts once
  the sidecar has started (startupProbe), it runs beside the regular containers, restarted
  whenever it exits, and is stopped after them (reverse order) on deletion or when they
  have all ended. No ``stdin``/``tty``, no ephemeral containers. gRPC probes and handlers
  are not supported (exec, httpGet, tcpSocket and sleep are, for probes and
  postStart/preStop hooks alike). The crash-loop back-off is the kubelet's (10 s doubling
  to 300 s, the first restart at once), configurable with ``restartBackoff``.
- **Kubelet API:** only ``/containerLogs`` and ``/healthz``; no exec, attach,
  port-forward, stats or metrics, so ``kubectl exec``/``port-forward``/``top`` fail. The
  serving certificate is self-signed and requests are not authenticated.
- **Node:** it writes with the admin kubeconfig, not a node identity (the Node authorizer
  and NodeRestriction are not exercised for it); no eviction under pressure (conditions
  stay False), no static pods, no device plugins, no node status images list. A Node
  deleted behind its back is not re-registered. Pods already Succeeded/Failed when the
  agent starts are left alone; pods an earlier agent was running are started afresh
  (their processes died with it), restart counts from zero.
- **Refresh:** ConfigMap/Secret volume content is re-read every 60 s (the kubelet watches
  or caches them); tokens are renewed when due.
"""
