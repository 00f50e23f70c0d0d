"""matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""


def pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # PNG files only; never needs a display
    import matplotlib.pyplot as plt
    return plt
