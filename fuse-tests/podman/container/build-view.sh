# shellcheck shell=sh disable=SC2016
# What the image built from Containerfile shows.
set -u
view /usr/share/common-licenses /var/lib/dpkg /etc/dpkg /etc/apt /etc/debian_version \
    /etc/debian_version.hard /etc/only.hard /usr/local/bin /opt /usr/share/man
check "deleted tree stays deleted" '! test -e /var/lib/dpkg/info'
check "tree recreated in a later step has only the new entry" '[ "$(ls -A /usr/share/common-licenses)" = MINE ]'
check "opaque /etc/dpkg shows only the new file" '[ "$(ls -A /etc/dpkg)" = only ]'
check "opaque /etc/apt (recreated twice) shows only the new tree" '[ "$(ls -A /etc/apt)" = sources.list.d ]'
check "hard link to a lower file" 'same_inode /etc/debian_version /etc/debian_version.hard'
check "hard link to a file of an earlier step" 'same_inode /etc/dpkg/only /etc/only.hard'
check "hard link across directories" 'same_inode /opt/x/g /usr/local/bin/g.hard'
check "file replacing a tree" '[ "$(cat /opt/deep)" = file ]'
check "dir replacing a file" '[ "$(cat /usr/share/man/page)" = page ]'
finish
