# Shared set-up steps for scripts/install, scripts/test and the benchmark (sourced, not run).

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root (the tests and most backends watch the kernel: sudo $0)" >&2
        exit 2
    fi
}

# tracefs is not always mounted (it was not on a fresh VM here): mount it where the kernel has it.
ensure_tracefs() {
    if [ ! -e /sys/kernel/tracing/events ] && grep -qw tracefs /proc/filesystems; then
        mount -t tracefs nodev /sys/kernel/tracing || echo "warning: could not mount tracefs" >&2
    fi
}

# apt_install PKG...: install the Debian packages that are missing (apt-get update once, only if needed).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# python_env EXTRA: a virtualenv in .venv with proctap installed (editable) plus EXTRA; sets $PY.
python_env() {
    local spec="$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    PY="$PWD/.venv/bin/python"
    local log
    log=$(mktemp)
    if ! "$PY" -m pip install -q --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" >&2
        rm -f "$log"
        echo "$0: pip install -e $spec failed" >&2
        return 1
    fi
    rm -f "$log"
    # an editable install has no bytecode yet: compile it now so no start-up compiles sources (and none has to
    # when PYTHONDONTWRITEBYTECODE is set)
    "$PY" -m compileall -q src/proctap >/dev/null
    system_python_path if-missing
}

# system_python_path always|if-missing: let the machine's own interpreters import this checkout's proctap
# (`python3 -m proctap`, `import proctap`) without the virtualenv: proctap needs nothing beyond the standard library,
# so a .pth file naming src/ in the interpreter's site directory is the whole installation.  Interpreters: `python3`
# on PATH, and /usr/local/bin/python3 and /usr/bin/python3 (what `sudo python3` finds through sudo's secure_path).
# `always` (scripts/install) rewrites the file (the checkout may have moved); `if-missing` (scripts/test, maybe on a
# throwaway clone) writes it only where the interpreter finds no proctap at all, so it never redirects an install.
# The file is removed from an interpreter older than 3.10, which cannot run proctap.
system_python_path() {
    local mode="$1" src="$PWD/src" seen=" " py exe site
    for py in "$(command -v python3 || true)" /usr/local/bin/python3 /usr/bin/python3; do
        [ -n "$py" ] && [ -x "$py" ] || continue
        # skip virtualenvs (they install proctap themselves) and interpreters already handled (symlinks, shims)
        exe=$("$py" -c 'import sys; print(sys.executable if sys.prefix == sys.base_prefix else "")' 2>/dev/null) \
            || continue
        [ -n "$exe" ] || continue
        case "$seen" in *" $exe "*) continue ;; esac
        seen="$seen$exe "
        site=$("$py" -c 'import site; print(site.getsitepackages()[0])') || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            if [ "$mode" = if-missing ] \
                && (cd / && "$py" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("proctap") is None)'); then
                continue
            fi
            mkdir -p "$site" && printf '%s\n' "$src" >"$site/proctap-src.pth" \
                || echo "warning: could not write $site/proctap-src.pth" >&2
        else
            rm -f "$site/proctap-src.pth"
        fi
    done
}
