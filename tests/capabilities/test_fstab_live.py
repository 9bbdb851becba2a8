"""fstab on a live system, safely: a private mount namespace (unshare --mount) with an
ext4 image on a loop device mounted relatime; inside it /etc, /var and /run are covered
(overlays, tmpfs) so that the machine's own files cannot change. The helper script
tests/fstab_live_ns.sh does the work inside the namespace."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require

SCRIPT = REPO / "tests" / "fstab_live_ns.sh"


def _sha(p: str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.mark.root
@pytest.mark.slow
def test_apply_remount_in_private_namespace(tmp_path: Path) -> None:
    require("root", "unshare", "loop")
    for tool in ("mkfs.ext4", "blkid", "findmnt", "mount"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.skip("no overlay filesystem in this kernel")
    img = tmp_path / "ssd.img"
    subprocess.run(["truncate", "-s", "32M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        uuid = subprocess.run(["blkid", "-c", "/dev/null", "-o", "value", "-s", "UUID", loop],
                              check=True, capture_output=True, text=True).stdout.strip()
        mp = tmp_path / "mnt ssd"  # a blank in the mount point: \040 in the fstab
        mp.mkdir()
        fstab = Path("/etc/fstab").read_text() if Path("/etc/fstab").exists() else ""
        esc = str(mp).replace(" ", "\\040")
        line = f"UUID={uuid}\t{esc}\text4\tdefaults,relatime\t0 2\n"
        (tmp_path / "fstab.copy").write_text(fstab + ("" if fstab.endswith("\n") or not fstab
                                                      else "\n") + line)
        before = _sha("/etc/fstab") if Path("/etc/fstab").exists() else None
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash",
                            str(SCRIPT), str(tmp_path), loop, str(mp), sys.executable,
                            str(REPO)], capture_output=True, text=True, timeout=600)
        after = _sha("/etc/fstab") if Path("/etc/fstab").exists() else None
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    if "dev-disk: unavailable" in out:
        pytest.skip(f"no /dev/disk/by-uuid/{uuid} (udev not running) and /dev cannot be "
                    "overlaid here to make it: the UUID= entry cannot be matched")
    report = "\n".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(tmp_path.iterdir())
                       if f.suffix in (".out", ".err", ".json"))
    # the machine's /etc/fstab never changed
    assert before == after
    # 1. a file bind-mounted over /etc/fstab: refused, nothing written
    assert "bind-exit: 1" in out and "bind-file: untouched" in out, report
    assert "cannot be replaced atomically" in (tmp_path / "bind.out").read_text()
    # 2. proposal, apply + remount, and a rerun that finds nothing to do
    assert "propose-exit: 3" in out and "apply-exit: 0" in out and "again-exit: 0" in out, \
        report
    mp_esc = str(mp).replace(" ", "\\040")
    assert any(x.startswith("before: ") and f" {mp_esc} rw,relatime " in x
               for x in out.splitlines()), out
    assert any(x.startswith("after: ") and f" {mp_esc} rw,noatime " in x
               for x in out.splitlines()), out
    data = json.loads((tmp_path / "apply.json").read_text())
    states = {i["id"]: i["state"] for i in data["items"]}
    assert states == {"fstab:/etc/fstab": "changed", f"remount:{mp}": "changed"}
    remount = next(i for i in data["items"] if i["id"].startswith("remount:"))
    assert "noatime" in remount["data"]["after"].split(",")
    assert data["mount_points"][0]["notes"] == [f"UUID={uuid} is {loop}"]
    new = (tmp_path / "fstab.after").read_text()
    old = (tmp_path / "fstab.copy").read_text()
    assert new == old.replace("defaults,relatime\t0 2", "defaults,noatime\t0 2")
    assert "backup: fstab.mnic-ops." in out
    assert "Success, no errors or warnings" in (tmp_path / "verify.out").read_text() or \
        "0 parse errors" in (tmp_path / "verify.out").read_text()
    # 3. undo puts relatime back live and the file back byte for byte
    assert "undo-exit: 0" in out and "undo-file: restored" in out, report
    assert any(x.startswith("undone: ") and f" {mp_esc} rw,relatime " in x
               for x in out.splitlines()), out
