"""The app's screens: one per mode (model, lab, pairs, eval, train, runs) and their dialogs."""
