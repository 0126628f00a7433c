"""Pictures that show how the detectors see: ``dl09 explain`` views and evaluation plots.

Every view is a matplotlib figure drawn without pyplot (Agg canvas), so it works
headless, and is saved as a PNG file atomically.
"""
