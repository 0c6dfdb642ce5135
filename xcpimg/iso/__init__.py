"""Installation ISO: staging tree, EFI boot image, mastering and the hybrid MBR/GPT."""
