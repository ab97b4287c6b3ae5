# shellcheck shell=sh disable=SC2016
# What an image committed from changes.sh (or a container of it) shows.
set -u
view /etc/added /etc/added.symlink /etc/os-release /etc/shells /etc/issue /etc/debian_version \
    /usr/share/common-licenses /etc/dpkg /etc/apt /etc/issue.net /etc/issue.renamed /opt \
    /etc/host.conf /etc/host.conf.hard /usr/local/bin /usr/share/man
check "opaque /etc/dpkg shows only the new file" '[ "$(ls -A /etc/dpkg)" = only ]'
check "opaque /etc/apt shows only the new file" '[ "$(ls -A /etc/apt)" = x.list ]'
check "deleted tree stays deleted" '! test -e /usr/share/common-licenses'
check "deleted file stays deleted" '! test -e /etc/debian_version'
check "dirs replacing a file and a symlink" '[ -d /usr/share/man ] && [ -d /opt/x/link ] && [ ! -L /opt/x/link ]'
finish
