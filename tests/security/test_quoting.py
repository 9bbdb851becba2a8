"""The quoting layer (mnic_ops/core/quoting.py) cannot add a line or a directive.

Property tests over printable and control characters: every value either reads back
exactly as given through a model of the program that reads the file (POSIX sh, cron's
``%`` rule, systemd's word splitting, sysctl.d), on one line, or is refused with an
error naming it. The end-to-end properties drive the real builders: ``cron install``'s
planner (through python-crontab), the watcher's unit and the shipped profile.d and
sysctl.d templates.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnic_ops.core import quoting
from mnic_ops.core.quoting import UnsafeValue

# Printable text, every control character, the Unicode line breaks, undecodable bytes
# (surrogateescape) and the characters each file format treats specially.
SPECIAL = list("\n\r\t\x00\x0b\x0c\x1b\x7f\x85\u2028\u2029%\\\"'$#;`|&<>*?[]{}~= \u00e9")
CHARS = st.one_of(st.characters(), st.sampled_from(SPECIAL),
                  st.sampled_from(["\udcff", "\udc80"]))
VALUES = st.text(CHARS, max_size=40)
PROPS = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def has_bad(s: str) -> bool:
    import unicodedata

    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") for c in s)


# --- models of the readers ------------------------------------------------------------

def systemd_words(text: str, *, exec_line: bool) -> list[str]:
    """systemd's extract_first_word(EXTRACT_UNQUOTE[|EXTRACT_CUNESCAPE]) on the words
    mnic-ops writes, then specifier (%%) and, on Exec lines, variable ($$) unescaping."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        w: list[str] = []
        while i < n and text[i] not in " \t":
            if text[i] == '"':
                i += 1
                while text[i] != '"':
                    if text[i] == "\\":
                        i += 1
                    w.append(text[i])
                    i += 1
                i += 1
            elif text[i] == "\\":
                w.append(text[i + 1])
                i += 2
            else:
                w.append(text[i])
                i += 1
        word = "".join(w)
        # specifiers: %% is one %, a lone % would be a specifier (we never write one)
        assert re.fullmatch(r"(?:[^%]|%%)*", word), word
        word = word.replace("%%", "%")
        if exec_line:
            assert re.fullmatch(r"(?:[^$]|\$\$)*", word), word
            word = word.replace("$$", "$")
        words.append(word)
    return words


def cron_job_lines(text: str) -> list[list[str]]:
    """The job lines of a system crontab as cron reads them: not blank, not a comment,
    not NAME=value; split into the five time fields, the user and the command field."""
    jobs = []
    for line in text.split("\n"):
        s = line.strip()
        if not s or s.startswith("#") or re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", s):
            continue
        jobs.append(s.split(None, 6))
    return jobs


# --- the functions ---------------------------------------------------------------------

@PROPS
@given(VALUES)
def test_shell_word_reads_back_or_is_refused(value: str) -> None:
    try:
        word = quoting.sh_word(value, "v")
    except UnsafeValue as exc:
        assert has_bad(value) and "v: " in exc.message
        return
    assert not has_bad(value)
    assert "\n" not in word and "\r" not in word
    assert shlex.split(word) == [value] if value else word == "''"


@PROPS
@given(VALUES, st.booleans())
def test_unit_word_reads_back_or_is_refused(value: str, exec_line: bool) -> None:
    try:
        word = quoting.unit_word(value, exec_line=exec_line)
    except UnsafeValue:
        assert has_bad(value)
        return
    assert not has_bad(value) and "\n" not in word
    assert systemd_words(word, exec_line=exec_line) == ([value] if value else [""])
    assert not word.endswith("\\")  # no line continuation


@PROPS
@given(VALUES)
def test_cron_command_reads_back_or_is_refused(value: str) -> None:
    cmd = f"/usr/bin/mnic-ops clean >>{shlex.quote(value)} 2>&1" if value else value
    try:
        quoting.cron_command(cmd, "v")
    except UnsafeValue:
        assert (has_bad(cmd) or "\\" in cmd or re.search(r"\s#", cmd)
                or not cmd.strip())
        return
    field = quoting.cron_escape(cmd)
    assert "\n" not in field
    assert quoting.cron_unescape(field) == (cmd, None)
    assert shlex.split(cmd)[2] == ">>" + value


@PROPS
@given(VALUES)
def test_sysctl_line_is_one_directive_or_refused(value: str) -> None:
    try:
        line = quoting.sysctl_line("fs.inotify.max_user_watches", value)
    except UnsafeValue:
        assert has_bad(value) or value != value.strip() or not value
        return
    assert "\n" not in line and "\r" not in line
    key, _, val = line.partition("=")
    assert key.strip() == "fs.inotify.max_user_watches" and val.strip() == value


@pytest.mark.parametrize("value", ["plain", "a b", "it's", '"q"', "$HOME", "`id`",
                                   "a\\b", "100%", "*", "~root", "é", "-n", ""])
def test_shell_words_through_a_real_shell(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {quoting.sh_word(value)}"],
                         capture_output=True, text=True, check=True).stdout
    assert out == value


def test_python_crontab_writes_the_percent_rule() -> None:
    import crontab

    cmd = quoting.cron_command("/bin/echo 100% >>/var/log/a%b 2>&1")
    tab = crontab.CronTab(tab="", user=False)
    job = tab.new(command=cmd, comment="mnic-ops:x", user="root")
    job.setall("* * * * *")
    line = tab.render().strip()
    assert line == f"* * * * * root {quoting.cron_escape(cmd)} # mnic-ops:x"
    with pytest.raises(UnsafeValue, match="backslash"):
        quoting.cron_command("/bin/echo a\\%b")
    with pytest.raises(UnsafeValue, match="blank before '#'"):
        quoting.cron_command("/bin/echo 'a #b'")


# --- the builders ------------------------------------------------------------------------

def _app(tmp: Path) -> object:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    root = tmp / "host"
    for d in ("etc/cron.d", "etc/mnic-ops", "proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    cfg = root / "etc/mnic-ops/config.toml"
    cfg.write_text('[cron]\ncompress_schedule = "15 3 * * *"\n'
                   'expire_schedule = "*/30 * * * *"\n')
    return AppContext(root=HostRoot.open(root), config_path=str(cfg))


@PROPS
@given(value=VALUES)
def test_cron_install_writes_exactly_two_jobs_or_nothing(tmp_path: Path, value: str) -> None:
    """Whatever cron.log holds (even a value the config loader would refuse, set here
    behind its back), the planned /etc/cron.d/mnic-ops has the header, MAILTO, SHELL
    and exactly our two jobs, each logging to exactly that path; or it is refused."""
    from mnic_ops.capabilities import cron
    from mnic_ops.engines import cronfile

    app = _app(tmp_path)
    log = "/var/log/" + value
    app.config.set("cron.log", log)  # type: ignore[attr-defined]
    try:
        plan = cron.plan_install(app, cronfile.Target(True, "root"))  # type: ignore[arg-type]
    except UnsafeValue:
        assert has_bad(log) or "\\" in log or re.search(r"\s#", log)
        return
    text = plan.items[0].payload[1].decode()  # type: ignore[index]
    other = [ln for ln in text.split("\n") if ln.strip() and not ln.startswith("#")]
    assert len(other) == 4, text  # MAILTO, SHELL and two jobs
    jobs = cron_job_lines(text)
    assert len(jobs) == 2, text
    for fields in jobs:
        assert len(fields) == 7 and fields[5] == "root", fields
        field = re.sub(r" # mnic-ops:(compress|expire)$", "", fields[6])
        cmd, stdin = quoting.cron_unescape(field)
        assert stdin is None
        words = shlex.split(cmd)
        assert words[-2:] == [">>" + log, "2>&1"], (log, words)


@PROPS
@given(value=VALUES)
def test_unit_has_its_directives_only(tmp_path: Path, value: str) -> None:
    """A data folder name (a user can create any) and the config path: the unit keeps
    the same directives, the folder is writable under its exact name or left out with a
    comment, and a config path that cannot be written refuses the unit."""
    from mnic_ops.capabilities import watchunit

    app = _app(tmp_path)
    path = "/home/u/" + value
    base = watchunit.render_unit(app, ["/home/u/plain"],  # type: ignore[arg-type]
                             ["/usr/bin/mnic-ops", "watch"])
    keys = [ln.split("=", 1)[0] for ln in base.split("\n") if "=" in ln
            and not ln.startswith("#")]
    text = watchunit.render_unit(app, [path],  # type: ignore[arg-type]
                             ["/usr/bin/mnic-ops", "watch"])
    got = [ln.split("=", 1)[0] for ln in text.split("\n") if "=" in ln
           and not ln.startswith("#")]
    rw = [ln for ln in text.split("\n") if ln.startswith("ReadWritePaths=")]
    mounts = [ln[len("RequiresMountsFor="):] for ln in text.split("\n")
              if ln.startswith("RequiresMountsFor=")]
    assert mounts in ([], [path])  # written only where no quoting is needed
    keys = [k for k in keys if k != "RequiresMountsFor"]
    got = [k for k in got if k != "RequiresMountsFor"]
    if has_bad(path):
        assert got == [k for k in keys if k != "ReadWritePaths"] and "left out" in text
    else:
        assert got == keys, text
        assert systemd_words(rw[0][len("ReadWritePaths="):], exec_line=False) == \
            ["-" + path]
    try:
        text = watchunit.render_unit(app, [], ["/usr/bin/mnic-ops",  # type: ignore[arg-type]
                                           "--config", path, "watch"])
    except UnsafeValue:
        assert has_bad(path)
        return
    start = [ln for ln in text.split("\n") if ln.startswith("ExecStart=")]
    assert len(start) == 1
    assert systemd_words(start[0][len("ExecStart="):], exec_line=True) == \
        ["/usr/bin/mnic-ops", "--config", path, "watch"]


def _system_template(name: str, ctx: dict[str, object]) -> str:
    from mnic_ops.capabilities import render, tiers

    return render.Templates([tiers.shipped_templates()]).render(name, ctx)


@PROPS
@given(st.lists(VALUES, min_size=1, max_size=3))
def test_profile_d_keeps_its_commands(names: list[str]) -> None:
    """User names (from the host's passwd) only ever land in a comment line."""
    t = {"python_optimize": 2, "inotify_watches": 1, "inotify_memory_percent": 2.0}
    ctx = {"tier": "server", "t": t, "d": {}, "framework_users": [
        {"uid": 1000 + i, "name": n} for i, n in enumerate(names)]}
    base_ctx = {**ctx, "framework_users": [{"uid": 1000 + i, "name": "u"}
                                           for i in range(len(names))]}
    base = _system_template("system/profile.sh.j2", base_ctx)
    try:
        text = _system_template("system/profile.sh.j2", ctx)
    except UnsafeValue:
        assert any(has_bad(n) for n in names)
        return
    commands = [ln for ln in text.split("\n") if not ln.startswith("#")]
    assert commands == [ln for ln in base.split("\n") if not ln.startswith("#")]
    assert len(text.split("\n")) == len(base.split("\n"))


def test_sysctl_d_is_one_directive() -> None:
    t = {"python_optimize": 2, "inotify_watches": 65536, "inotify_memory_percent": 2.0}
    text = _system_template("system/sysctl.conf.j2", {"tier": "laptop", "t": t,
                                                      "d": {"inotify_watches": 131072}})
    directives = [ln for ln in text.split("\n") if ln.strip() and not ln.startswith("#")]
    assert directives == ["fs.inotify.max_user_watches = 131072"]
    with pytest.raises(UnsafeValue):
        _system_template("system/sysctl.conf.j2", {
            "tier": "laptop", "t": t, "d": {"inotify_watches": "1\nkernel.x = 1"}})
