"""Release tooling: read, compare, remaster and publish installation media.

``reader`` opens any ISO9660 image with pycdlib; ``layout`` reads its El Torito
catalog and hybrid MBR/GPT; ``menus`` parses and edits boot menus; ``repodata``
reads a yum repository's package list; ``initrd`` inspects and extends
install.img; the commands are ``inspect``, ``diff``, ``remaster``, ``release``,
with ``answerfile`` for unattended media.
"""
