#!/bin/sh
# Installs the Nautilus scripts, the Dolphin service menus and the scanpix-action helper
# for the current user; `install.sh --uninstall` removes exactly what it installed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
bin=${SCANPIX_BIN_DIR:-$HOME/.local/bin}
nautilus="$data/nautilus/scripts/scanpix"
dolphin="$data/kio/servicemenus"          # Plasma 6
dolphin5="$data/kservices5/ServiceMenus"  # Plasma 5

if [ "${1:-}" = "--uninstall" ]; then
    rm -rf "$nautilus"
    rm -f "$bin/scanpix-action"
    for d in "$dolphin" "$dolphin5"; do rm -f "$d/scanpix-photo.desktop" "$d/scanpix-folder.desktop"; done
    echo "scanpix file-manager integration removed"
    exit 0
fi
mkdir -p "$bin" "$nautilus" "$dolphin" "$dolphin5"
install -m 0755 "$here/scanpix-action" "$bin/scanpix-action"
for f in "$here"/nautilus/*; do install -m 0755 "$f" "$nautilus/$(basename "$f")"; done
for d in "$dolphin" "$dolphin5"; do
    for f in "$here"/dolphin/*.desktop; do install -m 0755 "$f" "$d/$(basename "$f")"; done
done
echo "installed: $bin/scanpix-action, Nautilus scripts in $nautilus, Dolphin menus in $dolphin"
case ":$PATH:" in *":$bin:"*) ;; *) echo "note: add $bin to PATH so the menus find scanpix-action";; esac
