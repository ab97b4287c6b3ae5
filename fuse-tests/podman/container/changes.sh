# shellcheck shell=sh disable=SC2016
# The changes made in a container that is then diffed, exported and committed; started
# again afterwards (a restart mounts the same upper layer afresh), it shows what it sees.
set -eu
if [ -e /etc/added ]; then
    echo "## after a restart"
    # names of copied-up and linked files first: lookup order must not matter
    for f in /usr/local/bin/hard2 /etc/host.conf.hard /etc/issue.renamed /opt/x/hard /opt/x/g /etc/host.conf; do
        echo "$f: $(sha256sum <"$f" | cut -c1-16) $(stat -c 'size=%s nlink=%h' "$f")"
    done
    view /etc/apt /etc/dpkg /etc/added /etc/added.symlink /etc/shells /etc/issue /etc/issue.renamed \
        /etc/host.conf /etc/host.conf.hard /etc/os-release /opt /usr/local/bin /usr/share/man
    exit 0
fi
echo new >/etc/added
echo more >>/etc/os-release
chmod 0600 /etc/shells
chown 1000:1000 /etc/issue
rm /etc/debian_version
rm -rf /usr/share/common-licenses
# delete a lower directory and recreate it: opaque, its lower entries must stay hidden
rm -rf /etc/dpkg && mkdir /etc/dpkg && echo only >/etc/dpkg/only
# the fixture's own opaque directory, deleted and recreated again
rm -rf /etc/apt && mkdir /etc/apt && echo x >/etc/apt/x.list
mv /etc/issue.net /etc/issue.renamed
mv /opt/deep /opt/deep.moved
ln /etc/host.conf /etc/host.conf.hard
# /opt/x/g and /opt/x/hard are one lower file: g is looked up first, then hard is linked
ls -l /opt/x >/dev/null
ln /opt/x/hard /usr/local/bin/hard2
ln -s /etc/added /etc/added.symlink
mkfifo /opt/x/fifo2
# a file replaced by a directory; left empty: with native overlay, podman 4.3's diff fails
# with "not a directory" on entries below a path that is a file in a lower layer
rm /usr/share/man && mkdir /usr/share/man
rm -rf /opt/x/link && mkdir /opt/x/link
echo "changes done"
