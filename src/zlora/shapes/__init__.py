"""``builtin:shapes``: a small Z-Image pretrained on a procedural world of coloured shapes, its world (drawing and
captions), and a pixel-level judge of images drawn from that world's prompts."""
