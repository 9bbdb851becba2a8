"""Target choice and naming for relocate, on constructed mount facts (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnic_ops.capabilities.relocatetarget import choose_target, mount_refusal, project_dirname
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts.hostfacts import Mount
from mnic_ops.facts.projects import Project

DEFAULT = "/mnt/ssd/my-name-is-claude"


def mount(mp: str, fstype: str = "ext4", ssd: bool | None = True, opts: str = "rw",
          dev: str = "8:1", source: str = "/dev/sda1") -> Mount:
    return Mount(mount_point=mp, source=source, fstype=fstype, options=opts.split(","),
                 super_options=[], dev=dev, disks=["sda"], ssd=ssd)


@pytest.mark.parametrize(("m", "force", "why"), [
    (mount("/m", fstype="tmpfs"), True, "tmpfs"),
    (mount("/m", fstype="nfs4", source="srv:/x"), True, "network filesystem"),
    (mount("/m", opts="ro"), True, "read-only"),
    (mount("/m", fstype="vfat"), True, "cannot keep owners"),
    (mount("/m", ssd=False), False, "rotational"),
    (mount("/m", ssd=None), False, "unknown kind"),
    (mount("/m", ssd=False), True, None),
    (mount("/m"), False, None),
])
def test_refusals_name_the_reason(m: Mount, force: bool, why: str | None) -> None:
    got = mount_refusal(m, force)
    assert (got is None) if why is None else (got is not None and why in got)


def test_target_order(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    mounts = [mount("/", ssd=False, dev="8:0"), mount("/fast", dev="8:2"),
              mount("/slow", ssd=False, dev="8:3"), mount("/dev/shm", fstype="tmpfs",
                                                          dev="0:5")]
    t = choose_target(root, DEFAULT, DEFAULT, "/x/y", mounts)
    assert (t.host_path, t.why) == ("/x/y", "--to")
    t = choose_target(root, "/data/ssd", DEFAULT, None, mounts)  # set in the config
    assert (t.host_path, t.why) == ("/data/ssd", "config ssd_path")
    # default ssd_path, absent: the SSD mount, not the rotational or tmpfs ones
    t = choose_target(root, DEFAULT, DEFAULT, None, mounts)
    assert t.host_path == "/fast/my-name-is-claude" and "/fast" in t.why
    (tmp_path / "mnt" / "ssd").mkdir(parents=True)  # the guide's mount point exists
    assert choose_target(root, DEFAULT, DEFAULT, None, mounts).host_path == DEFAULT
    with pytest.raises(InputError, match="absolute"):
        choose_target(root, DEFAULT, DEFAULT, "rel/dir", mounts)


def test_no_ssd_at_all_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    mounts = [mount("/", ssd=False, dev="8:0"), mount("/data", ssd=None, dev="8:4")]
    with pytest.raises(InputError) as ei:
        choose_target(HostRoot(tmp_path), DEFAULT, DEFAULT, None, mounts)
    assert "no target" in ei.value.message and "rotational" in ei.value.message
    assert "--to" in ei.value.message


def _proj(path: str) -> Project:
    return Project(host_path=path, path=Path(path), uid=0, gid=0, user="u", group="g",
                   version=None, layout="project")


def test_project_folder_names_are_stable_readable_and_distinct() -> None:
    a = project_dirname(_proj("/home/alice/work/app"))
    b = project_dirname(_proj("/home/bob/work/app"))
    assert a.startswith("app-") and b.startswith("app-") and a != b
    assert a == project_dirname(_proj("/home/alice/work/app"))
    odd = project_dirname(_proj("/srv/my project: v2!"))
    assert odd.startswith("my_project_v2_-") or odd.startswith("my_project_v2-"), odd
    assert "/" not in odd and " " not in odd
