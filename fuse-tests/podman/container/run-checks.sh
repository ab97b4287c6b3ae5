# shellcheck shell=sh disable=SC2016
# podman run --rm: read, write, delete, rename and hard-link files of the image's lower
# layers, printing what the container sees after each step. Exit 1 if a check fails.
set -u
echo "## the image as built (fixture layers 1-5)"
cat /etc/os-release
view /opt /etc/apt /usr/share/man /etc/motd /usr/share/doc
check "layer 2 deleted /usr/share/doc" '! test -e /usr/share/doc'
check "layer 3 deleted /etc/motd" '! test -e /etc/motd'
check "layer 3 recreated /etc/apt (opaque): only sources.list" '[ "$(ls -A /etc/apt)" = sources.list ]'
check "layer 4 deleted /opt/x/f" '! test -e /opt/x/f'
check "layer 4 hard link g = hard" 'same_inode /opt/x/g /opt/x/hard'
check "layer 4 setuid g" 'test -u /opt/x/g'
check "layer 4 fifo" 'test -p /opt/x/fifo'
check "layer 4 owner 1000:1000" '[ "$(stat -c %u:%g /opt/deep/a/b/c/file)" = 1000:1000 ]'
check "layer 5 /usr/share/man is a file" '[ -f /usr/share/man ] && [ "$(cat /usr/share/man)" = notadir ]'
check "layer 5 appended to os-release" '[ "$(tail -n1 /etc/os-release)" = appended ]'

echo "## writes"
echo new >/opt/x/new
echo more >>/etc/os-release
printf XY | dd of=/etc/debian_version bs=1 seek=1 conv=notrunc 2>/dev/null
truncate -s 5 /etc/issue.net
chmod 0600 /etc/shells && chown 1000:1000 /etc/shells
mkdir -p /opt/newdir/sub && echo z >/opt/newdir/sub/z
# /opt/x/g and /opt/x/hard are one file in the lower layer (g was looked up first, above).
# Written through one name, that name is copied up and the other keeps the lower file, as
# with kernel overlayfs without index=on.
echo appended-hard >>/opt/x/hard
check "write to lower file" '[ "$(tail -n1 /etc/os-release)" = more ]'
check "in-place write" '[ "$(head -c 3 /etc/debian_version)" = 1XY ]'
check "truncate" '[ "$(stat -c %s /etc/issue.net)" = 5 ]'
check "chown/chmod of a lower file" '[ "$(stat -c %a:%u:%g /etc/shells)" = 600:1000:1000 ]'
check "write through a lower hard link goes to that name" '[ "$(tail -n1 /opt/x/hard)" = appended-hard ]'
check "the other name of the lower hard link is unchanged" '[ "$(cat /opt/x/g)" = two ]'
view /etc/os-release /etc/debian_version /etc/issue.net /etc/shells /opt/newdir /opt/x

echo "## deletes"
rm /etc/issue
rm -rf /usr/share/common-licenses /var/lib/dpkg/info
rm -r /opt/deep/a/b/c
rm /opt/x/hard
check "file deleted" '! test -e /etc/issue'
check "tree deleted" '! test -e /usr/share/common-licenses && ! test -e /var/lib/dpkg/info'
check "deleted dir is gone from its parent" '[ -z "$(ls -A /opt/deep/a/b)" ]'
check "rmdir of the emptied parent works" 'rmdir /opt/deep/a/b'
view /etc/issue /usr/share/common-licenses /var/lib/dpkg /opt/deep /opt/x

echo "## renames"
mv /etc/issue.net /etc/issue.moved
mv /opt/x/g /opt/x/g.renamed
mv /opt/deep /opt/deep.moved
mv /opt/newdir /opt/newdir.moved
mv /etc/host.conf /etc/shells
check "renamed file gone" '! test -e /etc/issue.net && [ "$(cat /etc/issue.moved)" = "$(printf "Debia")" ]'
check "renamed lower dir gone" '! test -e /opt/deep'
check "rename over an existing file" '! test -e /etc/host.conf'
view /etc/issue.moved /etc/shells /opt/x /opt/deep.moved /opt/newdir.moved

echo "## hard links"
ln /etc/debian_version /etc/debian_version.link
ln /usr/bin/tail /usr/local/bin/tail.link
ln /opt/x/new /opt/x/new.link
ln /etc/passwd /etc/passwd.link && rm /etc/passwd.link
# Reported, not checked: kernel overlayfs in a user namespace (rootless) gives the new name
# of a lower file its upper inode number and the old name its lower one.
inodes() { if same_inode "$1" "$2"; then echo "$1 $2: one inode"; else echo "$1 $2: two inode numbers"; fi; }
inodes /etc/debian_version /etc/debian_version.link
inodes /usr/bin/tail /usr/local/bin/tail.link
check "link to a new file: one inode" 'same_inode /opt/x/new /opt/x/new.link'
check "link count of a linked lower file" '[ "$(stat -c %h /etc/debian_version)" = 2 ]'
echo via-link >>/etc/debian_version.link
check "write through one name seen through the other" '[ "$(tail -n1 /etc/debian_version)" = via-link ]'
check "linked binary runs" '[ "$(echo a | /usr/local/bin/tail.link -n1)" = a ]'
view /etc/debian_version /etc/debian_version.link /etc/passwd /usr/local/bin /opt/x
finish
