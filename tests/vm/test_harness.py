"""The VM harness's own pieces, without booting anything (these run in the fast step):
the SMBIOS table, the mirror lookup, the recipe hash and the cache's completeness check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.vm import image
from tests.vm.machine import CLASSES_FILE, load_classes, smbios_type3


def _strings(table: bytes) -> list[str]:
    length = table[1]
    tail = table[length:]
    assert tail.endswith(b"\0\0"), "string set must end with a double NUL"
    return [s.decode() for s in tail[:-2].split(b"\0")] if tail != b"\0\0" else []


@pytest.mark.parametrize("chassis", [10, 7, 23, 3])
def test_smbios_type3_puts_the_chassis_at_offset_5(chassis: int) -> None:
    t = smbios_type3(chassis, "Vendor", "laptop")
    assert t[0] == 3 and t[1] == 0x16
    assert int.from_bytes(t[2:4], "little") == 0x0300
    assert t[5] == chassis
    strings = _strings(t)
    assert strings[t[4] - 1] == "Vendor"  # manufacturer, 1-based string index
    assert strings[t[6] - 1] == "laptop"  # version
    assert t[7] == t[8] == t[0x15] == 0  # serial, asset tag, SKU: no string


def test_smbios_type3_without_strings_ends_with_two_nuls() -> None:
    t = smbios_type3(23, "", "")
    assert len(t) == 0x16 + 2 and t.endswith(b"\0\0") and t[4] == t[6] == 0


@pytest.mark.parametrize("bad", [0, 128, -1])
def test_smbios_type3_rejects_chassis_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="chassis type"):
        smbios_type3(bad)


def test_classes_file_is_the_shared_definition() -> None:
    classes = load_classes()
    raw = json.loads(CLASSES_FILE.read_text())
    assert set(classes) == {"laptop", "workstation", "server"}
    for name, c in classes.items():
        assert (c.memory_mb, c.cpus, c.chassis) == (raw[name]["memory_mb"],
                                                    raw[name]["cpus"], raw[name]["chassis"])
    # The chassis types decide the intended class in mnic-ops itself.
    from mnic_ops.facts.hostclass import CHASSIS_CLASS
    assert {n: CHASSIS_CLASS[c.chassis] for n, c in classes.items()} == \
        {n: n for n in classes}


def test_mirror_from_deb822_skips_disabled_and_other_suites(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.delenv("MNIC_OPS_VM_MIRROR", raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n"
        "Enabled: no\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n"
        "\n"
        "# comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    (d / "b.sources.disabled").write_text("Types: deb\nURIs: http://no.example/\n"
                                         "Suites: bookworm\n")
    assert image.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_list_with_options(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIC_OPS_VM_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n")
    assert image.apt_mirror(tmp_path) == "http://list.example/debian"


def test_mirror_falls_back_and_env_wins(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIC_OPS_VM_MIRROR", raising=False)
    assert image.apt_mirror(tmp_path) == image.DEFAULT_MIRROR
    monkeypatch.setenv("MNIC_OPS_VM_MIRROR", "http://env.example/debian")
    assert image.apt_mirror(tmp_path) == "http://env.example/debian"


def test_recipe_hash_is_stable_and_follows_every_input(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    base = image.recipe_hash(image.recipe("http://m/debian"))
    assert base == image.recipe_hash(image.recipe("http://m/debian"))
    assert base != image.recipe_hash(image.recipe("http://other/debian"))
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "less"))
    assert base != image.recipe_hash(image.recipe("http://m/debian"))
    monkeypatch.undo()
    files = dict(image.GUEST_FILES)
    files["/etc/hostname"] = ("other\n", 0o644)
    monkeypatch.setattr(image, "GUEST_FILES", files)
    assert base != image.recipe_hash(image.recipe("http://m/debian"))


# -- cache: partial or damaged builds are never used ------------------------------------

def _fake_artifacts(dest: Path, mirror: str, log: Path) -> None:
    for name in image.ARTIFACTS:
        (dest / name).write_bytes(name.encode() * 1000)


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace debootstrap/mkfs with small files; the marker logic stays real."""
    calls: list[Path] = []

    def artifacts(dest: Path, mirror: str, log: Path) -> None:
        calls.append(dest)
        _fake_artifacts(dest, mirror, log)

    monkeypatch.setattr(image, "_build_artifacts", artifacts)
    return calls


def test_cache_builds_once_then_reuses(tmp_path: Path, fake_build: list[Path]) -> None:
    img, built = image.ensure_image(tmp_path, "http://m/debian")
    assert built is not None and len(fake_build) == 1
    img2, built2 = image.ensure_image(tmp_path, "http://m/debian")
    assert built2 is None and len(fake_build) == 1 and img2 == img
    assert img.dir.name == image.recipe_hash(image.recipe("http://m/debian"))
    assert not list(tmp_path.glob("tmp-*"))


@pytest.mark.parametrize("damage", ["no-marker", "truncated", "same-size-other-bytes",
                                    "other-recipe", "garbled-marker", "missing-file"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, fake_build: list[Path],
                                               damage: str) -> None:
    img, _ = image.ensure_image(tmp_path, "http://m/debian")
    marker = img.dir / image.MARKER
    if damage == "no-marker":
        marker.unlink()
    elif damage == "truncated":
        with img.root.open("r+b") as f:
            f.truncate(10)
    elif damage == "same-size-other-bytes":
        data = bytearray(img.initrd.read_bytes())
        data[5] ^= 0xFF
        img.initrd.write_bytes(bytes(data))
    elif damage == "other-recipe":
        m = json.loads(marker.read_text())
        m["recipe_hash"] = "0" * 16
        marker.write_text(json.dumps(m))
    elif damage == "garbled-marker":
        marker.write_text('{"recipe_hash": ')
    elif damage == "missing-file":
        img.kernel.unlink()
    found, why = image.verify(img.dir, img.recipe_hash)
    assert found is None and why
    img2, built = image.ensure_image(tmp_path, "http://m/debian")
    assert built is not None and len(fake_build) == 2
    assert image.verify(img2.dir, img2.recipe_hash)[0] == img2


def test_killed_build_leaves_no_entry_and_next_run_cleans_up(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    def dies(dest: Path, mirror: str, log: Path) -> None:
        (dest / "root.img").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(image, "_build_artifacts", dies)
    with pytest.raises(KeyboardInterrupt):
        image.ensure_image(tmp_path, "http://m/debian")
    rhash = image.recipe_hash(image.recipe("http://m/debian"))
    assert not (tmp_path / rhash).exists()
    # A build killed by SIGKILL leaves its tmp folder: the next builder removes it.
    stale = tmp_path / f"tmp-{rhash}-99999"
    stale.mkdir()
    (stale / "root.img").write_bytes(b"half")
    monkeypatch.setattr(image, "_build_artifacts", _fake_artifacts)
    _, built = image.ensure_image(tmp_path, "http://m/debian")
    assert built is not None and not stale.exists()


def test_old_images_are_pruned_keeping_two(tmp_path: Path, fake_build: list[Path]) -> None:
    dirs = [image.ensure_image(tmp_path, f"http://m{i}/debian")[0].dir for i in range(3)]
    assert not dirs[0].exists() and dirs[1].exists() and dirs[2].exists()


def test_remove_tree_unmounts_instead_of_deleting_through_a_mount(tmp_path: Path) -> None:
    """A killed debootstrap can leave /proc or a bind-mounted /dev inside the chroot:
    deleting the tree must never reach into it. Runs in a private mount namespace."""
    require("unshare")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    code = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from tests.vm import image\n"
        f"subprocess.run(['mount', '--bind', {str(outside)!r}, {str(tree / 'dev')!r}],"
        " check=True)\n"
        f"image.remove_tree(Path({str(tree)!r}))\n"
    )
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep"


@pytest.mark.parametrize("missing,package", [("qemu-system-x86_64", "qemu-system-x86"),
                                             ("debootstrap", "debootstrap")])
def test_vm_tests_skip_with_the_reason_when_a_tool_is_missing(
        monkeypatch: pytest.MonkeyPatch, missing: str, package: str) -> None:
    import shutil

    from tests.vm import conftest as vmconf

    real = shutil.which
    monkeypatch.setattr(vmconf.shutil, "which",
                        lambda name, *a, **k: None if name == missing else real(name))
    monkeypatch.setattr(vmconf.os, "geteuid", lambda: 0)
    assert vmconf.vm_unavailable() == f"{missing} not installed (apt-get install {package})"
    monkeypatch.setattr(vmconf.os, "geteuid", lambda: 1000)
    assert "root" in (vmconf.vm_unavailable() or "")
