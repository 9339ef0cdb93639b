"""``kdumpkit receive`` against hostile clients and hostile local users (issue #19).

Every case runs the receiver the way sshd does — ``kdumpkit receive DIR``
with the request in ``SSH_ORIGINAL_COMMAND`` — and checks three things: the
answer is one line on stderr, the exit status is non-zero, and nothing
outside the dump directory changed (``outside`` holds files a planted
symlink points at; it is compared byte for byte, mode and owner included).
The same receiver behind a real sshd, with a second local user planting
files, is in tests/interop/test_receive_sshd.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpkit.capture import dmesg
from kdumpkit.capture.naming import HOST_MAX, is_crash_id, is_hostname, safe_hostname
from kdumpkit.capture.targets import crash_id_for
from kdumpkit.cli.main import main
from kdumpkit.dump.flattened import END_MARKER, FLAT_HEADER, FLAT_HEADER_SIZE, FLAT_RECORD, FLAT_SIGNATURE

LOG = b"[    0.000000] Linux version 6.1.0-hostile\n"
CID = "web-2026-01-02-03:04:05"
OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting files as another user needs root")


def declare(data: bytes) -> str:
    return f"--size {len(data)} --sha256 {hashlib.sha256(data).hexdigest()}"


def flat(payload: bytes = b"hello", *, end: bool = True) -> bytes:
    head = FLAT_HEADER.pack(signature=FLAT_SIGNATURE, type=1, version=1).ljust(FLAT_HEADER_SIZE, b"\0")
    return head + FLAT_RECORD.pack(offset=0, buf_size=len(payload)) + payload + (END_MARKER if end else b"")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` that a write through a planted path could change."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st_ = p.lstat()
            body: object = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            out[str(p.relative_to(root))] = (st_.st_mode, st_.st_uid, st_.st_size, body)
    return out


class World:
    """A dump directory next to an ``outside`` one that must never change."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.mp, self.capsys = monkeypatch, capsys
        self.store = tmp / "store"
        self.outside = tmp / "outside"
        self.store.mkdir(mode=0o700)
        self.outside.mkdir()
        (self.outside / "authorized_keys").write_text("ssh-ed25519 AAAA precious\n")
        (self.outside / "victim").mkdir()
        (self.outside / "victim" / "dmesg.txt").write_bytes(b"not yours\n")
        self.before = snapshot(self.outside)

    def run(self, request: str, data: bytes = b"", *policy: str) -> tuple[int, str, str]:
        """One forced-command session, in this process: (exit status, stdout, stderr)."""
        self.mp.setenv("SSH_ORIGINAL_COMMAND", f"kdumpkit receive /ignored {request}")
        self.mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        self.capsys.readouterr()
        rc = main(["receive", str(self.store), *policy])
        out, err = self.capsys.readouterr()
        return rc, out, err


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    w = World(tmp_path, monkeypatch, capsys)
    yield w
    assert snapshot(w.outside) == w.before, "the receiver changed something outside the dump directory"


def refused(rc: int, err: str, *words: str) -> None:
    assert rc != 0, err
    assert err.count("\n") == 1 and err.startswith("kdumpkit receive: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def send(world: World, name: str, data: bytes, cid: str = CID, *policy: str) -> tuple[int, str, str]:
    extra = declare(data) if name != "vmcore.flat" else ""
    return world.run(f"--crash-id {cid} --name {name} {extra}", data, *policy)


# -- 1. retention is the server's, per host --------------------------------------------------
def _old_crash(world: World, cid: str, age: float) -> Path:
    d = world.store / cid
    d.mkdir(mode=0o700)
    (d / "manifest.json").write_text("{}")
    (d / "vmcore.flat").write_bytes(b"x")
    t = time.time() - age
    os.utime(d, (t, t))
    return d


def test_client_cannot_send_keep_count(world: World) -> None:
    others = [_old_crash(world, f"db{i}-2025-01-01-00:00:0{i}", 1000 + i) for i in range(3)]
    mine = _old_crash(world, "web-2025-01-01-00:00:00", 999)
    assert send(world, "dmesg.txt", LOG)[0] == 0
    manifest = b'{"crash_id": "web"}'
    for keep in ("--keep-count 1", "--keep-age-days 0.0001", "--keep-size 1", "--keep-count=1", "--keep-c 1"):
        rc, _, err = world.run(f"--crash-id {CID} --name manifest.json {declare(manifest)} {keep}", manifest)
        refused(rc, err, "server's policy")
    assert all(d.exists() for d in [*others, mine])
    assert not (world.store / CID / "manifest.json").exists()


def test_server_policy_prunes_only_the_senders_host(world: World) -> None:
    others = [_old_crash(world, f"db-2025-01-01-00:00:0{i}", 1000 + i) for i in range(3)]
    similar = _old_crash(world, "web-1-2025-01-01-00:00:00", 1000)  # another host whose name starts like ours
    mine = [_old_crash(world, f"web-2025-01-01-00:00:0{i}", 900 + i) for i in range(3)]
    planted = world.store / "web-2025-01-01-00:00:09"
    planted.symlink_to(world.outside / "victim")
    assert send(world, "dmesg.txt", LOG)[0] == 0
    rc, _, err = send(world, "manifest.json", b"{}", CID, "--keep-count", "2")
    assert rc == 0, err
    assert all(d.exists() for d in [*others, similar]) and planted.is_symlink()
    assert [d.exists() for d in mine] == [True, False, False]  # newest kept (+ the current one = 2)
    assert (world.store / CID / "manifest.json").exists()


@as_root
def test_server_policy_skips_folders_of_other_users(world: World) -> None:
    theirs = _old_crash(world, "web-2025-01-01-00:00:00", 1000)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    assert send(world, "dmesg.txt", LOG)[0] == 0
    assert send(world, "manifest.json", b"{}", CID, "--keep-count", "1")[0] == 0
    assert theirs.exists()


def test_policy_in_the_forced_command_is_not_a_request(world: World) -> None:
    """Extra words after DIR that are not --keep-* are an admin's mistake, not a request."""
    rc, _, err = send(world, "dmesg.txt", LOG, CID, "--name", "dmesg.txt")
    refused(rc, err, "forced command")


# -- 2. planted paths --------------------------------------------------------------------------
def test_symlinked_crash_folder_is_not_written_through(world: World) -> None:
    (world.store / CID).symlink_to(world.outside / "victim")
    rc, _, err = send(world, "dmesg.txt", LOG)
    refused(rc, err, "symlink")
    rc, _, err = send(world, "vmcore.flat", flat())
    refused(rc, err, "symlink")
    assert (world.store / CID).is_symlink()


def test_probe_reserves_a_fresh_folder_beside_a_planted_one(world: World) -> None:
    (world.store / CID).symlink_to(world.outside / "victim")
    rc, out, err = world.run(f"--probe --crash-id {CID}")
    assert rc == 0, err
    assert out.strip().endswith(f"crash-id={CID}.1")
    assert (world.store / f"{CID}.1").is_dir() and not (world.store / f"{CID}.1").is_symlink()
    assert send(world, "dmesg.txt", LOG, f"{CID}.1")[0] == 0
    assert (world.store / f"{CID}.1" / "dmesg.txt").read_bytes() == LOG


@as_root
def test_crash_folder_of_another_user_is_refused(world: World) -> None:
    d = world.store / CID
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    os.chown(d, OTHER_UID, OTHER_UID)
    rc, _, err = send(world, "dmesg.txt", LOG)
    refused(rc, err, "not created by the receiver")
    assert list(d.iterdir()) == []


def test_planted_incomplete_symlink_is_not_written_through(world: World) -> None:
    d = world.store / CID
    d.mkdir(mode=0o700)
    (d / "dmesg.txt.incomplete").symlink_to(world.outside / "authorized_keys")
    (d / "vmcore.flat.incomplete").symlink_to(world.outside / "new-file")
    refused(*send(world, "dmesg.txt", LOG)[::2], "exists")
    refused(*send(world, "vmcore.flat", flat())[::2], "exists")
    assert not (world.outside / "new-file").exists()
    assert not (d / "dmesg.txt").exists() and not (d / "vmcore.flat").exists()


@as_root
def test_planted_incomplete_file_never_becomes_the_dump(world: World) -> None:
    d = world.store / CID
    d.mkdir(mode=0o700)
    part = d / "vmcore.flat.incomplete"
    part.write_bytes(b"attacker's")
    os.chmod(part, 0o666)
    os.chown(part, OTHER_UID, OTHER_UID)
    refused(*send(world, "vmcore.flat", flat())[::2], "exists")
    assert part.read_bytes() == b"attacker's" and not (d / "vmcore.flat").exists()


def test_final_name_already_there_is_not_replaced(world: World) -> None:
    d = world.store / CID
    d.mkdir(mode=0o700)
    (d / "dmesg.txt").symlink_to(world.outside / "authorized_keys")
    refused(*send(world, "dmesg.txt", LOG)[::2], "exists")
    assert (d / "dmesg.txt").is_symlink() and not (d / "dmesg.txt.incomplete").exists()


@as_root
def test_dump_directory_others_could_swap(world: World, tmp_path: Path) -> None:
    os.chmod(world.store, 0o777)  # writable by all, no sticky bit
    refused(*send(world, "dmesg.txt", LOG)[::2], "sticky")
    os.chmod(world.store, 0o1777)  # /var/crash on Ubuntu: fine, others cannot rename our folders
    assert send(world, "dmesg.txt", LOG)[0] == 0
    os.chown(world.store, OTHER_UID, OTHER_UID)
    refused(*send(world, "kallsyms.gz", b"k")[::2], f"uid {OTHER_UID}")


def test_modes_are_private(world: World) -> None:
    os.umask(old := os.umask(0))
    try:
        assert send(world, "dmesg.txt", LOG)[0] == 0
        assert send(world, "vmcore.flat", flat())[0] == 0
    finally:
        os.umask(old)
    assert (world.store / CID).stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in (world.store / CID).iterdir()} == {
        "dmesg.txt": 0o600, "vmcore.flat": 0o600}


# -- 3. names, concurrency, completeness -----------------------------------------------------
@pytest.mark.parametrize("cid", ["abc\n", "web-2026\n", "../etc", ".hidden", "a..b", "a/b", "café-1", "-rf", "",
                                 "x" * 129, "a b", "a:b\n"])
def test_bad_crash_ids(world: World, cid: str) -> None:
    rc, _, err = world.run(f"--crash-id={shlex.quote(cid)} --name dmesg.txt {declare(LOG)}", LOG)
    refused(rc, err, "bad crash id")
    assert list(world.store.iterdir()) == []


@pytest.mark.parametrize("request_", ["--crash-id h --name ../../etc/passwd", "--crash-id h --name authorized_keys",
                                      "--crash-id h --name dmesg.txt", "--crash-id h --name dmesg.txt --size 1",
                                      "--crash-id h --name dmesg.txt --size -1 --sha256 " + "0" * 64,
                                      "--crash-id h --name dmesg.txt --size 1 --sha256 XYZ",
                                      "--crash-id h --nam dmesg.txt", "--crash-id h --name dmesg.txt extra",
                                      "--crash-id 'unterminated"])
def test_bad_requests(world: World, request_: str) -> None:
    rc, _, err = world.run(request_, LOG)
    refused(rc, err)
    assert list(world.store.iterdir()) == []


def _session(store: Path, request: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SSH_ORIGINAL_COMMAND=f"kdumpkit receive /ignored {request}",
               PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-m", "kdumpkit.cli.main", "receive", str(store)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_sessions_for_one_file(world: World) -> None:
    good = flat(b"first " * 1000)
    first = _session(world.store, f"--crash-id {CID} --name vmcore.flat")
    assert first.stdin is not None
    first.stdin.write(good[:5000])
    first.stdin.flush()
    part = world.store / CID / "vmcore.flat.incomplete"
    deadline = time.monotonic() + 60
    while not part.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = _session(world.store, f"--crash-id {CID} --name vmcore.flat")
    _, err2 = second.communicate(flat(b"second"), timeout=60)
    refused(second.returncode, err2.decode(), "another transfer")
    first.stdin.write(good[5000:])
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert (world.store / CID / "vmcore.flat").read_bytes() == good and not part.exists()
    third = _session(world.store, f"--crash-id {CID} --name vmcore.flat")
    _, err3 = third.communicate(flat(b"third"), timeout=60)
    refused(third.returncode, err3.decode(), "exists (will not overwrite)")
    assert (world.store / CID / "vmcore.flat").read_bytes() == good


@pytest.mark.parametrize(("name", "sent", "declared", "why"), [
    ("dmesg.txt", LOG[:-7], LOG, "cut after"),
    ("dmesg.txt", LOG + b"more", LOG, "more than the declared"),
    ("manifest.json", b'{"a": 2}', b'{"a": 1}', "SHA-256"),
    ("dmesg.txt", b"", LOG, "cut after 0"),
    ("vmcore.flat", flat(end=False), None, "end marker"),
    ("vmcore.flat", flat()[:-3], None, "end marker"),
    ("vmcore.flat", flat(END_MARKER, end=False), None, "end marker"),  # the marker as a payload's tail
    ("vmcore.flat", flat() + b"\0", None, "after the stream's end marker"),
    ("vmcore.flat", b"ELF" + bytes(5000), None, "not a makedumpfile"),
    ("vmcore.flat", FLAT_HEADER.pack(signature=FLAT_SIGNATURE, type=1, version=1).ljust(FLAT_HEADER_SIZE, b"\0")
     + FLAT_RECORD.pack(offset=-5, buf_size=1), None, "corrupt record"),
])
def test_incomplete_transfer_keeps_no_final_name(world: World, name: str, sent: bytes, declared: bytes | None,
                                                 why: str) -> None:
    extra = declare(declared) if declared is not None else ""
    rc, _, err = world.run(f"--crash-id {CID} --name {name} {extra}", sent)
    refused(rc, err, why, "kept as")
    assert not (world.store / CID / name).exists()
    assert (world.store / CID / f"{name}.incomplete").exists()


def test_complete_transfers_arrive(world: World) -> None:
    for name, data in (("dmesg.txt", LOG), ("kallsyms.gz", b"\x1f\x8b" + bytes(100)), ("vmcore.flat", flat()),
                       ("manifest.json", b"{}")):
        rc, _, err = send(world, name, data)
        assert rc == 0, err
        assert (world.store / CID / name).read_bytes() == data
    assert sorted(p.name for p in (world.store / CID).iterdir()) == [
        "dmesg.txt", "kallsyms.gz", "manifest.json", "vmcore.flat"]


# -- hostnames: what crash_hostname() makes, receive accepts --------------------------------
@pytest.mark.parametrize(("uts", "folder"), [
    ("a..b", "a.b"), ("..", "localhost"), (".hidden", "hidden"), ("café", "xn--caf-dma"), ("Ünïcode.example",
     "xn--ncode-cta3g.example"), ("ホスト", "xn--zck4a3c"), ("web\n", "web"), ("a/b", "a_b"), ("-rf", "rf"),
    ("x" * 100, "x" * HOST_MAX), ("(none)", "localhost"), ("db(2)", "db_2"), ("web-1.example.org", "web-1.example.org"),
])
def test_odd_hostnames_can_dump(world: World, monkeypatch: pytest.MonkeyPatch, uts: str, folder: str) -> None:
    monkeypatch.setattr(dmesg, "dump_hostname", lambda dump: uts)
    host = dmesg.crash_hostname(None)  # type: ignore[arg-type]
    assert host == folder and is_hostname(host)
    cid = crash_id_for(host, 0)
    rc, _, err = send(world, "dmesg.txt", LOG, cid)
    assert rc == 0, err
    assert (world.store / cid / "dmesg.txt").read_bytes() == LOG


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_safe_hostname_lands_in_the_accepted_set(name: str) -> None:
    safe = safe_hostname(name)
    assert safe == "" or is_hostname(safe)
    assert safe == "" or is_crash_id(crash_id_for(safe, 0))


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,40}[A-Za-z0-9])?", fullmatch=True))
def test_safe_hostname_keeps_accepted_names(name: str) -> None:
    """The two sides agree exactly: an accepted name is never rewritten, a rewritten one always accepted."""
    assert safe_hostname(name) == name or not is_hostname(name)
    if ".." not in name:
        assert is_hostname(name) and safe_hostname(name) == name
