"""Development helpers: offline models, the local emulator stack, SQuAD sample data."""
