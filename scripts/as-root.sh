# shellcheck shell=bash
# Sourced by the README's commands (demo.sh, test.sh, setup.sh): they need root (network namespaces,
# apt). As root they just go on; otherwise they run themselves again through sudo, or, without sudo,
# say what to do instead.

# as_root SCRIPT ARGS...: returns as root, or replaces the process (sudo) or exits 1.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    local script name
    script="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    name="$(basename "$1")"
    shift
    if command -v sudo >/dev/null 2>&1; then
        echo "$name: needs root (network namespaces, Debian packages); running it with sudo" >&2
        exec sudo -- "$script" "$@"
    fi
    echo "$name: needs root (it builds network namespaces and installs Debian packages), and sudo is not installed." >&2
    echo "  Run it as root: su -c '$script'" >&2
    echo "  or install sudo (as root: apt-get install sudo; adduser $(id -un) sudo) and run it again." >&2
    exit 1
}
