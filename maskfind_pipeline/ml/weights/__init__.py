"""Pretrained encoder weights, offline: where training finds them, and how `maskfind weights
fetch` downloads and verifies them."""
