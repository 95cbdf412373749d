#!/bin/sh
# Installs the Nautilus scripts, the Dolphin service menus and the scanpix-action helper
# for the current user; `install.sh --uninstall` removes exactly what it installed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
bin=${SCANPIX_BIN_DIR:-$HOME/.local/bin}
nautilus="$data/nautilus/scripts/scanpix"
dolphin="$data/kio/servicemenus"          # KDE Frameworks 5.85+ and Plasma 6 read service menus here
legacy="$data/kservices5/ServiceMenus"    # where earlier versions of this script put them too

if [ "${1:-}" = "--uninstall" ]; then
    rm -rf "$nautilus"
    rm -f "$bin/scanpix-action"
    for d in "$dolphin" "$legacy"; do rm -f "$d/scanpix-photo.desktop" "$d/scanpix-folder.desktop"; done
    echo "scanpix file-manager integration removed"
    exit 0
fi
mkdir -p "$bin" "$nautilus" "$dolphin"
install -m 0755 "$here/scanpix-action" "$bin/scanpix-action"
for f in "$here"/nautilus/*; do install -m 0755 "$f" "$nautilus/$(basename "$f")"; done
# Executable: KIO ignores a user's service menu that is not.  One location only, or
# Plasma 5.85+ (which reads both) would show every entry twice.
for f in "$here"/dolphin/*.desktop; do install -m 0755 "$f" "$dolphin/$(basename "$f")"; done
echo "installed: $bin/scanpix-action, Nautilus scripts in $nautilus, Dolphin menus in $dolphin"
case ":$PATH:" in *":$bin:"*) ;; *) echo "note: add $bin to PATH so the menus find scanpix-action";; esac
