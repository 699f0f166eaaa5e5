# Shared by scripts/run, scripts/test and scripts/bench: install what is missing, build.
# shellcheck shell=bash

BERTH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export BERTH_ROOT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth/target}
export BERTH_FIXTURES_DIR=${BERTH_FIXTURES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth/fixtures}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_apt PKG...: installs the Debian packages that are not installed yet.
ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust with rustup first" >&2
    exit 1
  fi
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

# What berthd and berth-core need at run time on the direct backend.
# The OCI runtimes: crun where it can run (faster), runc otherwise (docs/containers.md).
RUNTIME_APT=(ca-certificates crun runc)
# What the tests and fixtures need on top.
# docker.io: Debian's dockerd 20.10, the reference the tests compare with (started by hand).
# gnome-keyring, dbus, libsecret-tools: a real Secret Service for the keyring test (its own
# D-Bus session, started by the test; secret-tool reads the stored password back).
TEST_APT=(docker-registry skopeo umoci busybox-static apache2-utils jq openssl zstd python3 curl docker.io
  gnome-keyring dbus libsecret-tools)

# QEMU for the VM backend's tests. Some machines carry a newer qemu-utils (from backports) than
# the qemu-system-x86 Debian ships, which blocks the install: then take Debian's qemu-utils too.
ensure_qemu() {
  local pkgs=() p ver pinned=()
  command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
  # The arm64 guest boots under qemu-system-aarch64 in the tests too.
  command -v qemu-system-aarch64 >/dev/null || pkgs+=(qemu-system-arm)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  ensure_apt "${pkgs[@]}" 2>/dev/null && return 0
  for p in "${pkgs[@]}"; do
    ver=$(apt-cache policy "$p" | sed -n 's/^ *Candidate: //p')
    pinned+=("$p=$ver")
  done
  say "installing ${pinned[*]} (with the matching qemu-utils)"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${pinned[@]}" "qemu-utils=${ver}" >/dev/null
}

# The vhost-user vsock device QEMU talks to where /dev/vhost-vsock is missing (rust-vmm).
ensure_vhost_vsock() {
  command -v vhost-device-vsock >/dev/null && return 0
  say "cargo install vhost-device-vsock"
  cargo install --locked --quiet vhost-device-vsock
}

# The UI (ui/): Node 18 or newer with npm, and Debian's chromium for its end-to-end tests
# (driven by playwright-core: no browser download). Debian's packages only for what is missing,
# so a Node from elsewhere (nodesource, which brings its own npm) is kept.
ensure_node() {
  local missing=()
  if ! command -v node >/dev/null || ! node -e 'process.exit(+process.versions.node.split(".")[0] < 18 ? 1 : 0)'; then
    missing+=(nodejs)
  fi
  command -v npm >/dev/null || missing+=(npm)
  [ -x "${BERTH_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] || ensure_apt "${missing[@]}"
}

# ui/node_modules from the committed package-lock.json (npm ci), again only when the lock changed.
ensure_ui() {
  ensure_node
  local lock="$BERTH_ROOT/ui/package-lock.json" stamp="$BERTH_ROOT/ui/node_modules/.berth-lock-sha256" sum
  sum=$(sha256sum "$lock" | cut -d' ' -f1)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && return 0
  say "npm ci (ui/)"
  (cd "$BERTH_ROOT/ui" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$sum" >"$stamp"
}

# The desktop app (src-tauri/, docs/desktop.md): WebKitGTK 4.1, the tray's appindicator and
# librsvg to build it; for its WebDriver test Xvfb, Debian's WebKitWebDriver, a D-Bus daemon
# (the test's own session bus) and tauri-driver (cargo install, about a minute).
DESKTOP_APT=(pkg-config libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev)
DESKTOP_TEST_APT=(xvfb webkit2gtk-driver dbus)
ensure_desktop() {
  ensure_apt "${DESKTOP_APT[@]}"
}
ensure_desktop_test() {
  ensure_apt "${DESKTOP_APT[@]}" "${DESKTOP_TEST_APT[@]}"
  command -v tauri-driver >/dev/null && return 0
  say "cargo install tauri-driver"
  cargo install --locked --quiet tauri-driver
}

# ui/dist first (the app embeds it when it is compiled), then src-tauri: a Cargo workspace of its
# own (its own Cargo.lock), in the shared target dir. The first build takes 4–5 minutes here.
build_desktop() {
  say "building the desktop app (ui/dist, then src-tauri)"
  (cd "$BERTH_ROOT/ui" && npm run --silent build >/dev/null)
  (cd "$BERTH_ROOT/src-tauri" && cargo build --quiet)
}

build_workspace() {
  say "building (target dir $CARGO_TARGET_DIR)"
  (cd "$BERTH_ROOT" && cargo build --workspace --bins --quiet)
}

# The macOS and Windows VM backends (crates/vm/src/vz.rs, hyperv.rs) cannot run here, but they
# must type-check: cargo check and clippy of berth-vm for their targets. Both need only the
# targets' standard libraries (added with rustup when missing), no linker or SDK.
FOREIGN_TARGETS=(aarch64-apple-darwin x86_64-pc-windows-msvc)
check_foreign_targets() {
  local installed t
  installed=$(rustup target list --installed)
  for t in "${FOREIGN_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  done
  for t in "${FOREIGN_TARGETS[@]}"; do
    # clippy type-checks as cargo check does, and lints on top.
    say "cargo clippy berth-vm --target $t"
    (cd "$BERTH_ROOT" &&
      cargo clippy -p berth-vm --no-deps --all-targets --quiet --target "$t" -- -D warnings)
  done
}
