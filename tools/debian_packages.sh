# Sourced by dynconv's scripts (quickstart.sh, sanitize.sh, build_docs.sh): one way to make sure
# Debian packages are installed.
#
#   ensure_debian_packages PKG...   installs the missing ones with apt-get when run as root;
#                                   otherwise prints the apt-get line and exits 1. Does nothing
#                                   (but say so) on a system without dpkg-query.

ensure_debian_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "dynconv: no dpkg-query (not Debian?): not checking packages; needs $*"
    return 0
  fi
  local missing=() pkg status
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "dynconv: Debian packages present: $*"
    return 0
  fi
  if [[ $(id -u) -eq 0 ]]; then
    echo "dynconv: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "dynconv: missing Debian packages: ${missing[*]};" \
      "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
}
