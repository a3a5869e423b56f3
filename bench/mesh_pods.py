"""The mesh benchmark's test bed (bench/mesh.py): one node network namespace, two pods per
row routed through it, each pod its own network namespace and cgroup, everything named
`membrane-test-<pid>-*` after the benchmark's pid and removed by `Bed.close` (also on
failure and on SIGINT/SIGTERM, which mesh.py turns into an exception).

A pod is joined the way the mini-cluster joins its pods (`minicluster/src/pods.rs`, what a
routed interface plugin makes): `eth0` with the pod's /32, a default route via 169.254.1.1
on-link, and in the node the host veth holding that gateway and the /32 route to the pod.
No BPF goes on the root cgroup or a host interface: the agent attaches to the pods' own
cgroups and network namespaces only, and every iptables rule goes into a pod namespace."""

import os
import signal
import subprocess
import time

GATEWAY = "169.254.1.1"


def sh(*args, check=True, capture=False, ns=None):
    """Runs a command (in network namespace `ns` when given); raises on failure."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout if capture else None


def cgroup2_root():
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[2] == "cgroup2":
            return f[1]
    raise RuntimeError("no cgroup2 mount")


class Pod:
    """One pod: network namespace, cgroup, address; processes started in it."""

    def __init__(self, bed, name, ip):
        self.bed, self.name, self.ip = bed, name, ip
        self.ns = f"{bed.tag}-{name}"
        self.cgroup = os.path.join(bed.cg_root, self.ns)
        self.bpffs = None

    def spawn(self, args, log, uid=None, pin=None):
        """Starts `args` in the pod's cgroup and namespace (as `uid` when given, on CPU
        `pin` when given); returns the Popen, whose pid is the program's own (ip netns
        exec, setpriv and taskset exec)."""
        cmd = ["ip", "netns", "exec", self.ns]
        if pin is not None:
            cmd += ["taskset", "-c", str(pin)]
        if uid is not None:
            cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        cmd += [str(a) for a in args]
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        out = open(log, "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             preexec_fn=enter)
        self.bed.procs.append(p)
        return p

    def run(self, args, timeout):
        """Runs `args` in the pod's cgroup and namespace to completion: (rc, stdout, stderr)."""
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        r = subprocess.run(["ip", "netns", "exec", self.ns] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout, preexec_fn=enter)
        return r.returncode, r.stdout, r.stderr


class Bed:
    """The node and its pods; `close` undoes everything in reverse."""

    def __init__(self, agent_bin):
        self.tag = f"membrane-test-{os.getpid()}"
        self.agent = agent_bin
        self.cg_root = cgroup2_root()
        self.node = f"{self.tag}-node"
        self.pods = []
        self.procs = []
        self.made_node = False
        sh("ip", "netns", "add", self.node)
        self.made_node = True
        sh("ip", "link", "set", "lo", "up", ns=self.node)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"):
            sh("sysctl", "-qw", key, ns=self.node)

    def add_pod(self, name, ip):
        """A pod on the node: namespace, cgroup, veth pair, /32 and routes."""
        pod = Pod(self, name, ip)
        sh("ip", "netns", "add", pod.ns)
        self.pods.append(pod)
        os.mkdir(pod.cgroup)
        # Host veth names are at most 15 bytes: the pod's index and the pid's tail.
        host = f"lxc{len(self.pods)}-{os.getpid() % 100000}"
        sh("ip", "link", "add", host, "netns", self.node, "type", "veth",
           "peer", "name", "eth0", "netns", pod.ns)
        sh("ip", "link", "set", "lo", "up", ns=pod.ns)
        sh("ip", "addr", "add", f"{ip}/32", "dev", "eth0", ns=pod.ns)
        sh("ip", "link", "set", "eth0", "up", ns=pod.ns)
        sh("ip", "route", "add", GATEWAY, "dev", "eth0", "scope", "link", ns=pod.ns)
        sh("ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink", ns=pod.ns)
        sh("ip", "addr", "add", f"{GATEWAY}/32", "dev", host, ns=self.node)
        sh("ip", "link", "set", host, "up", ns=self.node)
        sh("ip", "route", "add", f"{ip}/32", "dev", host, ns=self.node)
        return pod

    def attach(self, pod, splice):
        """The datapath on the pod as the agent sets it for an injected pod: outbound
        capture of every connect but the sidecar's (uid 1337) to 127.0.0.1:15001, inbound
        capture by sk_lookup to 15006, the splice on or off; its own pin directory (one
        endpoint)."""
        pod.bpffs = f"/sys/fs/bpf/{pod.ns}"
        args = [self.agent, "--bpffs", pod.bpffs, "attach", "--cgroup", pod.cgroup,
                "--capture", "--inbound-netns", f"/run/netns/{pod.ns}", "--pod-ip", pod.ip]
        if not splice:
            args.append("--no-splice")
        sh(*args)

    def counters(self, pod):
        """The pod's datapath counters as the agent prints them."""
        return sh(self.agent, "--bpffs", pod.bpffs, "counters", capture=True, check=False)

    def close(self):
        """Stops every process, detaches, removes pins, cgroups and namespaces."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pod in reversed(self.pods):
            # Whatever still runs in the pod (an nginx worker, a load generator).
            for pid in (sh("ip", "netns", "pids", pod.ns, check=False, capture=True) or "").split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            if pod.bpffs:
                sh(self.agent, "--bpffs", pod.bpffs, "detach", "--cgroup", pod.cgroup, check=False)
                sh("rm", "-rf", pod.bpffs, check=False)
            for _ in range(100):
                try:
                    os.rmdir(pod.cgroup)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            sh("ip", "netns", "del", pod.ns, check=False)
        if self.made_node:
            sh("ip", "netns", "del", self.node, check=False)
