"""Post-training: chat format, supervised fine-tuning, distillation."""
