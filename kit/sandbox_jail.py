"""The sandbox's own processes (see kit/sandbox.py). Never imported by the kit: kit/sandbox.py
runs this file's text with `python -I -S -c` and one of the two entry points below.

supervise()  strict mode. Enters new user, mount, network, PID, IPC and UTS namespaces, waits
             for the parent to write the uid/gid maps, then forks `init` (PID 1 of the new PID
             namespace), which builds a read-only root with a private size-limited tmpfs,
             starts the worker with limits and no capabilities, and reports one JSON line.
harness()    the worker: reads the program, its tests and the verdict token from stdin, runs
             them, and writes `token + verdict` on the verdict descriptor. Also used alone in
             best-effort mode, where, before the program runs, it confines itself with the
             kernel's own tools: resource limits, Landlock (pip `landlockpy`) and a seccomp filter
             (libseccomp through pip `pyseccomp`). See `seccomp_filter` for the rules.
"""

import json
import os
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
VERDICT_FD = 3
DEVICES = ("null", "zero", "full", "random", "urandom")


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _call(libc, ctypes, name, *args):
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _enc(s):
    return None if s is None else s.encode()


# ---------------------------------------------------------------- strict: supervisor and init


def supervise():
    ctypes, libc = _libc()
    try:
        _call(libc, ctypes, "unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
              | CLONE_NEWIPC | CLONE_NEWUTS)
    except OSError as exc:
        os.write(1, f"E{exc}\n".encode())
        os._exit(3)
    os.write(1, b"u")  # the parent now writes our uid/gid maps, then the configuration
    cfg = json.loads(sys.stdin.buffer.read())
    alive_r, alive_w = os.pipe()  # EOF on it: the supervisor is gone
    pid = os.fork()
    if pid == 0:
        try:
            os.close(alive_w)
            _init(cfg, ctypes, libc, alive_r)
        except BaseException as exc:  # setup failed: one line for the parent
            os.write(2, f"sandbox setup: {type(exc).__name__}: {exc}\n".encode())
            os._exit(70)
    for fd in cfg.get("rpc", ()):  # the worker's; EOF must come when it ends
        os.close(fd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _locked_flags(path):
    """Mount flags a bind remount inside a user namespace must keep (the kernel locks them)."""
    f = os.statvfs(path).f_flag
    out = MS_NOSUID
    for st, ms in ((os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                   (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if f & st:
            out |= ms
    return out


def _build_root(cfg, ctypes, libc):
    def mount(src, dst, fstype, flags, data=None):
        _call(libc, ctypes, "mount", _enc(src), _enc(dst), _enc(fstype), ctypes.c_ulong(flags), _enc(data))

    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("kit-sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    # Python itself may live under /tmp (a venv in a checkout there): then /tmp is a private
    # size-limited tmpfs of its own that holds those read-only views, instead of a link into
    # the work folder.
    tmp_binds = any(p == "/tmp" or p.startswith("/tmp/") for p in cfg["binds"])
    if tmp_binds:
        os.makedirs(root + "/tmp")
        mount("kit-tmp", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={cfg['disk_mb']}m,nr_inodes=4096,mode=1777")
    for path in cfg["binds"]:  # read-only views of the system and of Python, nothing else
        dst = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.readlink(path), dst)
            continue
        if os.path.isdir(path):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "w").close()
        mount(path, dst, None, MS_BIND)
        mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _locked_flags(dst))
    os.makedirs(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    work = cfg["work"]
    os.makedirs(root + work)
    mount("kit-work", root + work, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={cfg['disk_mb']}m,nr_inodes=4096,mode=0777")
    if not tmp_binds:
        os.symlink(work + "/tmp", root + "/tmp")
    # Swap roots and drop the old one: the host's files are then unreachable, not just hidden.
    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(f"pivot_root: unknown machine {os.uname().machine}")
    if libc.syscall(nr, b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    _call(libc, ctypes, "umount2", b".", MNT_DETACH)
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.mkdir(work + "/tmp")
    os.chmod(work + "/tmp", 0o777)
    with open(work + "/program.py", "w") as f:
        f.write(cfg["code"] + "\n\n" + cfg["tests"] + "\n")


def _drop_privileges(cfg, ctypes, libc):
    """No capabilities, now or after exec, and no way to gain any (no_new_privs, nosuid)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _call(libc, ctypes, "prctl", PR_SET_SECUREBITS, 0x3, 0, 0, 0)  # NOROOT, locked
    try:
        os.setgroups([])
    except OSError:
        pass  # `setgroups` denied: there is only our own group
    uid, gid = cfg["worker_id"], cfg["worker_id"]
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    _call(libc, ctypes, "capset", ctypes.byref(Header(0x20080522, 0)), data)
    _call(libc, ctypes, "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _start_worker(cfg, ctypes, libc, payload_r, verdict_w, out_w):
    import resource

    pid = os.fork()
    if pid:
        return pid
    try:
        import fcntl

        rpc = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in cfg.get("rpc", ())]
        os.dup2(payload_r, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(verdict_w, VERDICT_FD)
        for i, fd in enumerate(rpc):  # the judge's pipes: 4 and 5
            os.dup2(fd, VERDICT_FD + 1 + i)
        os.closerange(VERDICT_FD + 1 + len(rpc), 65536)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        os.chdir(cfg["work"])
        mem, cpu = cfg["memory_mb"] * 2**20, cfg["cpu_seconds"]
        for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                             (resource.RLIMIT_FSIZE, cfg["disk_mb"] * 2**20),
                             (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_NPROC, cfg["nproc"])):
            resource.setrlimit(limit, (value, value))
        _drop_privileges(cfg, ctypes, libc)
        import pyseccomp

        seccomp_filter(pyseccomp, os.getpid(), fallback=False).load()  # kept across execve
        exe = cfg["exe"]
        os.execve(exe, [exe, "-I", "-B", "-c", cfg["harness"]], cfg["env"])
    except BaseException as exc:
        os.write(2, f"sandbox worker: {type(exc).__name__}: {exc}\n".encode())
    os._exit(71)


def _init(cfg, ctypes, libc, alive):
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the supervisor killed: so are we
    if select.select([alive], [], [], 0)[0]:
        os._exit(1)  # it died before that was set
    os.close(alive)
    # Loaded now, while the host's files are visible and /sbin/ldconfig can still run (ctypes
    # finds libseccomp with it); the worker loads its filter just before it starts Python.
    sys.path.append(cfg["seccomp_dir"])
    import pyseccomp  # noqa: F401
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the worker may not read our memory
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    os.umask(0o022)
    started = time.monotonic()
    _build_root(cfg, ctypes, libc)
    payload_r, payload_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    out_r, out_w = os.pipe()
    worker = _start_worker(cfg, ctypes, libc, payload_r, verdict_w, out_w)
    for fd in (payload_r, verdict_w, out_w, *cfg.get("rpc", ())):
        os.close(fd)
    payload = json.dumps({"token": cfg["token"], "code": cfg["code"], "tests": cfg["tests"],
                          "verdict_fd": VERDICT_FD, "work": cfg["work"], "role": cfg.get("role"),
                          "rpc": [VERDICT_FD + 1, VERDICT_FD + 2] if cfg.get("rpc") else []}).encode()
    for fd in (payload_w, verdict_r, out_r):
        os.set_blocking(fd, False)
    deadline = time.monotonic() + cfg["timeout"]
    verdict, tail, status = b"", b"", None
    readers, writers = [verdict_r, out_r], [payload_w]
    while status is None:
        while True:  # PID 1 reaps everything; we only keep the worker's status
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == worker:
                status = st
        if status is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, w, _ = select.select(readers, writers, [], min(left, 0.05))
        if w:
            try:
                n = os.write(payload_w, payload[:65536])
                payload = payload[n:]
            except OSError:
                payload = b""
            if not payload:
                os.close(payload_w)
                writers = []
        for fd in r:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                readers.remove(fd)
            elif fd == verdict_r:
                verdict = (verdict + chunk)[:4096]
            else:
                tail = (tail + chunk)[-2048:]
    for fd in readers:  # what is left in the pipes, without waiting for anyone
        try:
            chunk = os.read(fd, 65536)
            if fd == verdict_r:
                verdict = (verdict + chunk)[:4096]
            else:
                tail = (tail + chunk)[-2048:]
        except OSError:
            pass
    if status is None:
        result = {"status": "timeout"}
    elif os.WIFSIGNALED(status):
        result = {"status": "signal", "signal": os.WTERMSIG(status)}
    else:
        result = {"status": "exit", "code": os.WEXITSTATUS(status)}
    result.update(verdict=verdict.decode("utf-8", "replace"), output=tail.decode("utf-8", "replace"),
                  seconds=round(time.monotonic() - started, 3))
    os.write(1, json.dumps(result).encode() + b"\n")
    os._exit(0)  # PID 1 exits: the kernel kills whatever the program left behind


# ---------------------------------------------------------------- the worker


def harness():
    import builtins

    write, exit_now, read = os.write, os._exit, os.read  # before the program can replace them
    raw = b""
    while True:
        chunk = read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    payload = json.loads(raw)
    del raw
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    token, verdict_fd = payload.pop("token"), payload["verdict_fd"]
    if payload.get("best_effort"):
        try:
            _confine(payload)
        except BaseException as exc:  # noqa: BLE001 - fail closed: nothing runs unconfined
            write(2, f"sandbox setup: {type(exc).__name__}: {exc}\n".encode())
            exit_now(70)

    def report(reason):
        if type(reason) is not str:
            reason = "failed"
        reason = "".join([reason])[:300]
        try:
            write(verdict_fd, (token + "\n" + reason).encode("utf-8", "replace"))
        finally:
            exit_now(0)

    if payload.get("role") == "judge":
        ctypes, libc = _libc()
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # its memory (the token) closed to its own user
        report(_judge(payload))
    if payload.get("role") == "candidate":
        _serve(payload, exit_now)

    # run_program: the program alone passes when it runs to its end (nothing to forge there)
    program_file = os.path.join(payload["work"], "program.py")
    glob = {"__name__": "__main__", "__builtins__": builtins, "__file__": program_file}
    try:
        code = compile(payload["code"], program_file, "exec", dont_inherit=True)
    except SyntaxError as exc:
        report(f"failed: SyntaxError: {exc.msg} (line {exc.lineno})")
    try:
        exec(code, glob)
        reason = "passed"
    except MemoryError:
        reason = "memory"
    except SystemExit:
        reason = "exited before the tests ran to the end"
    except BaseException as exc:  # noqa: BLE001 - anything the program raises is a failure
        try:
            text = str(exc)
            reason = f"failed: {type(exc).__name__}" + (f": {text[:200]}" if text else "")
        except BaseException:  # noqa: BLE001
            reason = "failed: an exception that cannot be printed"
    report(reason)


# ---------------------------------------------------------------- verdicts: judge and candidate
#
# run_tests() runs two sandboxes side by side: the candidate (the program alone, no tests, no
# token) and the judge (the tests and the token, no program code). The tests call the
# program's functions through two pipes; what comes back is plain data (exact builtin types,
# rebuilt by the judge from JSON), so every comparison, `in`, `and`, `abs(x - y) < e` or bare
# `assert` runs on the judge's own objects, in a process the program cannot reach.

MAX_MESSAGE = 4 << 20  # bytes in one answer
PLAIN = (type(None), bool, int, float, str)
STOPPED = "failed: the program stopped answering"
FIXED_REASONS = ("memory", "timeout", "exited before the tests ran to the end")


class _NotPlain(TypeError):
    pass


def _encode(value, convert=None, refs=None, depth=0):
    """JSON for plain data (exact builtin types only); `convert` may turn other values into
    plain ones (the candidate's side: numpy); `refs` maps judge-side handles to their ids."""
    t = type(value)
    if depth > 100:
        raise _NotPlain("nested more than 100 deep")
    if t in PLAIN:
        return value
    if t is list:
        return [_encode(v, convert, refs, depth + 1) for v in value]
    if t in (tuple, set, frozenset):
        return {"t": t.__name__, "v": [_encode(v, convert, refs, depth + 1) for v in value]}
    if t is dict:
        return {"t": "dict", "v": [[_encode(k, convert, refs, depth + 1),
                                    _encode(v, convert, refs, depth + 1)] for k, v in value.items()]}
    if t is bytes:
        return {"t": "bytes", "v": value.hex()}
    if t is complex:
        return {"t": "complex", "v": [value.real, value.imag]}
    if refs is not None and t is _Remote:
        return {"t": "ref", "v": refs(value)}
    if convert is not None:
        return _encode(convert(value), None, refs, depth + 1)
    raise _NotPlain(f"a {t.__name__} is not plain data")


def _decode(j, refs=None, depth=0):
    """The judge's objects from JSON: only exact builtin types come out (`refs`: the
    candidate's side, which may also receive its own objects back)."""
    t = type(j)
    if depth > 100:
        raise ValueError("nested more than 100 deep")
    if t in PLAIN:
        return j
    if t is list:
        return [_decode(v, refs, depth + 1) for v in j]
    if t is dict and type(j.get("t")) is str:
        kind, v = j["t"], j.get("v")
        if kind in ("tuple", "set", "frozenset") and type(v) is list:
            items = [_decode(x, refs, depth + 1) for x in v]
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
        if kind == "dict" and type(v) is list:
            return {_decode(k, refs, depth + 1): _decode(x, refs, depth + 1) for k, x in v}
        if kind == "bytes" and type(v) is str:
            return bytes.fromhex(v)
        if kind == "complex" and type(v) is list and len(v) == 2:
            return complex(float(v[0]), float(v[1]))
        if kind == "ref" and refs is not None:
            return refs[v]
    raise ValueError("not plain data")


class _Conn:
    """Newline-delimited JSON over two pipes."""

    def __init__(self, rfd, wfd):
        self.r, self.w = os.fdopen(rfd, "rb"), wfd

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(self.w, data):]

    def recv(self):
        line = self.r.readline(MAX_MESSAGE + 1)
        if len(line) > MAX_MESSAGE:
            raise RuntimeError(f"an answer of more than {MAX_MESSAGE >> 20} MiB")
        if not line.endswith(b"\n"):
            raise EOFError("the program stopped answering")
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError("the program sent something that is not an answer") from None


class _Remote:
    """The judge's stand-in for an object that lives in the program (a function, an instance):
    it can be called, and its attributes, items, length and iteration asked for; comparing it,
    hashing it or asking its truth refuses, since only plain data is judged."""

    __slots__ = ("_conn", "_ref", "_kind")

    def __init__(self, conn, ref, kind):
        self._conn, self._ref, self._kind = conn, ref, kind

    def _ask(self, op, **fields):
        conn = self._conn
        conn.send(dict(fields, op=op, ref=self._ref))
        return _answer(conn, conn.recv())

    def __call__(self, *args, **kwargs):
        sent = [_encode(a, refs=_ref_of) for a in args]
        conn = self._conn
        conn.send({"op": "call", "ref": self._ref, "args": sent,
                   "kwargs": {str(k): _encode(v, refs=_ref_of) for k, v in kwargs.items()}})
        reply = conn.recv()
        after = reply.get("after") if type(reply) is dict else None
        if type(after) is list and len(after) == len(args):  # the function changed its arguments
            for arg, new in zip(args, after):
                try:
                    new = _decode(new)
                except (ValueError, TypeError):
                    continue
                if type(arg) is list and type(new) is list:
                    arg[:] = new
                elif type(arg) in (dict, set) and type(new) is type(arg):
                    arg.clear()
                    arg.update(new)
        return _answer(conn, reply)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("attr", name=name)

    def __iter__(self):
        return self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __len__(self):
        return self._ask("len")

    def __getitem__(self, key):
        return self._ask("getitem", key=_encode(key, refs=_ref_of))

    def _refuse(self, *_):
        raise AssertionError(f"used an object of the program's own type {self._kind} where a plain "
                             "value was expected")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __hash__ = __contains__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __mod__ = __pow__ = __neg__ = __abs__ = __float__ = __int__ = __index__ = _refuse

    def __repr__(self):
        return f"<{self._kind} from the program>"


def _ref_of(remote):
    return remote._ref


def _answer(conn, reply):
    if type(reply) is not dict:
        raise RuntimeError("the program answered something else")
    if "value" in reply:
        return _decode(reply["value"])
    if type(reply.get("ref")) is int:
        return _Remote(conn, reply["ref"], str(reply.get("kind"))[:60])
    if reply.get("stop") is True:
        raise StopIteration
    if type(reply.get("raise")) is str:
        import builtins

        name, message = reply["raise"][:60], str(reply.get("message"))[:200]
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, Warning):
            raise cls(message)
        raise RuntimeError(f"{name}: {message}")
    raise RuntimeError("the program answered something else")


def _free_names(ast, tree):
    """Names the tests use but never bind: what they expect from the program."""
    import builtins

    loads, bound = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return sorted(loads - bound - set(dir(builtins)))


def _judge(payload):
    """Run the tests against the program's answers; the reason (only "passed" if they all ran)."""
    import ast
    import builtins

    conn = _Conn(*payload["rpc"])
    try:
        tree = ast.parse(payload["tests"])
        tests = compile(tree, "tests", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"failed: the tests do not compile: {exc.msg} (line {exc.lineno})"
    try:
        first = conn.recv()
    except (EOFError, ValueError):
        return STOPPED
    if type(first) is not dict or first.get("ready") is not True:
        said = first.get("failed") if type(first) is dict else None
        said = said[:300] if type(said) is str else "the program did not start"
        return said if said in FIXED_REASONS else "failed: " + said
    glob = {"__name__": "__main__", "__builtins__": builtins}
    try:
        for name in _free_names(ast, tree):
            conn.send({"op": "get", "name": name})
            try:
                glob[name] = _answer(conn, conn.recv())
            except (NameError, AttributeError, KeyError):
                pass  # not defined by the program: a NameError where the tests use it
        exec(tests, glob)
        return "passed"
    except EOFError:
        return STOPPED
    except MemoryError:
        return "memory"
    except SystemExit:
        return "exited before the tests ran to the end"
    except BaseException as exc:  # noqa: BLE001 - any failure of the tests
        text = str(exc)
        return f"failed: {type(exc).__name__}" + (f": {text[:200]}" if text else "")


def _serve(payload, exit_now):
    """The candidate: run the program, say whether it started, then answer the judge."""
    import builtins

    conn = _Conn(*payload["rpc"])
    program_file = os.path.join(payload["work"], "program.py")
    glob = {"__name__": "__main__", "__builtins__": builtins, "__file__": program_file}
    try:
        exec(compile(payload["code"], program_file, "exec", dont_inherit=True), glob)
        started = {"ready": True}
    except SyntaxError as exc:
        started = {"failed": f"SyntaxError: {exc.msg} (line {exc.lineno})"}
    except MemoryError:
        started = {"failed": "memory"}
    except SystemExit:
        started = {"failed": "exited before the tests ran to the end"}
    except BaseException as exc:  # noqa: BLE001
        started = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
    conn.send(started)
    if "failed" in started:
        exit_now(0)
    objects = []

    def convert(value):  # library values as plain data: numpy's, Counter, namedtuple, ...
        if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
            return value.tolist()
        for base in (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset):
            if isinstance(value, base):
                return base(value)
        raise _NotPlain(type(value).__name__)

    def reply(value, **extra):
        try:
            return dict(extra, value=_encode(value, convert))
        except _NotPlain:
            objects.append(value)
            return dict(extra, ref=len(objects) - 1, kind=type(value).__name__)

    while True:
        try:
            req = conn.recv()
        except EOFError:
            exit_now(0)
        try:
            op = req["op"]
            if op == "get":
                if req["name"] not in glob:
                    raise NameError(f"name {req['name']!r} is not defined")
                out = reply(glob[req["name"]])
            else:
                target = objects[req["ref"]]
                if op == "call":
                    args = [_decode(a, objects) for a in req["args"]]
                    kwargs = {k: _decode(v, objects) for k, v in req["kwargs"].items()}
                    value = target(*args, **kwargs)
                    try:
                        after = [_encode(a, convert) for a in args]
                    except _NotPlain:
                        after = None
                    out = reply(value, after=after)
                elif op == "attr":
                    out = reply(getattr(target, req["name"]))
                elif op == "iter":
                    out = reply(iter(target))
                elif op == "next":
                    out = reply(next(target))
                elif op == "len":
                    out = reply(len(target))
                else:
                    out = reply(target[_decode(req["key"], objects)])
        except StopIteration:
            out = {"stop": True}
        except BaseException as exc:  # noqa: BLE001 - the program's error, for the tests to see
            try:
                out = {"raise": type(exc).__name__, "message": str(exc)[:200]}
            except BaseException:  # noqa: BLE001
                out = {"raise": "RuntimeError", "message": "an exception that cannot be printed"}
        conn.send(out)


# ---------------------------------------------------------------- kernel confinement

# Syscalls that hold memory outside RLIMIT_AS (memfd pages, SysV and POSIX shared memory,
# message queues, io_uring, keyrings), reach other processes (ptrace and friends) or make new
# namespaces and mounts (a new user namespace could mount a tmpfs of any size). Refused in both
# modes. Strict mode is one process already; the filter keeps it so in best-effort mode too.
ALWAYS_DENIED = (
    "memfd_create", "memfd_secret", "shmget", "shmat", "msgget", "mq_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "add_key", "request_key", "keyctl",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise", "perf_event_open", "bpf", "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount", "fsconfig", "fspick",
    "move_mount", "open_tree", "mount_setattr", "fork", "vfork", "setsid", "setpgid",
    "migrate_pages", "move_pages", "open_by_handle_at", "name_to_handle_at",
)
# Best-effort mode only (strict mode has namespaces, and a private tmpfs to write in): no
# program started, no socket of any kind, no file or folder created, changed or removed anywhere.
FALLBACK_DENIED = (
    "execve", "execveat", "socket", "socketpair", "creat", "mkdir", "mkdirat", "mknod", "mknodat",
    "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "link", "linkat", "symlink",
    "symlinkat", "truncate", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown",
    "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr",
    "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "acct", "swapon", "quotactl",
)
FIRST_UNNAMED = 454  # newer syscalls than this libseccomp may name: ENOSYS (same numbers on
LAST_SYSCALL = 511   # x86_64 and aarch64 from 424 on), so a new kernel adds no way around


def seccomp_filter(sc, pid, fallback):
    """The seccomp filter (libseccomp: it also refuses other ABIs, i386 and x32, on x86_64).
    Everything else is allowed; each refused call fails with EPERM (ENOSYS for clone3, whose
    flags a filter cannot read, so that threads fall back to clone)."""
    import errno

    f = sc.SyscallFilter(sc.ALLOW)
    deny, nosys = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.ENOSYS)
    for name in ALWAYS_DENIED + (FALLBACK_DENIED if fallback else ()):
        f.add_rule(deny, name)
    f.add_rule(nosys, "clone3")
    f.add_rule(nosys, "openat2")  # its flags are behind a pointer
    for nr in range(FIRST_UNNAMED, LAST_SYSCALL + 1):
        f.add_rule(nosys, nr)
    # clone only for threads (CLONE_THREAD set): no child process, so nothing outlives the run.
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, 0x00010000, 0))
    # Signals only to itself; limits, priorities and scheduling only its own.
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        f.add_rule(deny, name, sc.Arg(0, sc.NE, pid))
    for name in ("prlimit64", "setpriority", "sched_setaffinity", "sched_setscheduler",
                 "sched_setparam", "sched_setattr", "ioprio_set"):
        arg = 1 if name in ("setpriority", "ioprio_set") else 0
        f.add_rule(deny, name, sc.Arg(arg, sc.NE, 0))  # 0: the caller itself
    if fallback:  # files open for reading only
        for name, arg in (("open", 1), ("openat", 2)):
            for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC):
                f.add_rule(deny, name, sc.Arg(arg, sc.MASKED_EQ, flag, flag))
    return f


def _confine(payload):
    """Best-effort mode, in the worker before the program runs (it runs as nobody when the kit
    runs as root: kit/sandbox.py starts it so): limits, then Landlock, then seccomp. Why these
    libraries rather than our own code: kit/sandbox.py's docstring."""
    import resource

    sys.path.insert(0, payload["lib"])  # pyseccomp and landlockpy, copied there (-I skips PYTHONPATH)
    import pyseccomp  # before the limits: ctypes finds libseccomp by running ldconfig

    if payload.get("drop_root"):  # no capabilities now or later; files: Landlock decides
        ctypes, libc = _libc()
        _drop_privileges({"worker_id": 0}, ctypes, libc)
    for name, value in payload["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    if payload.get("landlock"):
        import landlockpy as ll

        # Every access right this kernel knows is handled, so refused unless granted below:
        # reading the system and Python's folders. Signals and abstract Unix sockets are
        # scoped to this process (ABI 6 on; seccomp refuses both anyway).
        with ll.Ruleset(scoped=ll.Scope.SIGNAL | ll.Scope.ABSTRACT_UNIX_SOCKET) as rules:
            for path in payload["readable"] + [payload["work"]]:
                if os.path.isdir(path):
                    rules.allow_path(path, ll.AccessFS.READ_FILE | ll.AccessFS.READ_DIR
                                     | ll.AccessFS.EXECUTE)
                elif os.path.exists(path):
                    rules.allow_path(path, ll.AccessFS.READ_FILE)
            rules.restrict()  # also sets no_new_privs
    seccomp_filter(pyseccomp, os.getpid(), fallback=True).load()
