"""leafnet's lab: tools that measure and report on runs (bench, study report, calibration).

They use the training core's public functions; nothing in the core imports them.
"""
