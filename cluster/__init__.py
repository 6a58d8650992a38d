"""Ray layer: restore actors (`worker`), the dispatcher that keeps them busy, storage and image I/O
(`io`), and starting Ray (`runtime`). Imports ddnm, never jobs."""
