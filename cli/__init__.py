"""The `rl2f` command line (installed as `rl2f.cli`)."""

if __name__ != "rl2f.cli":
    # Imported as top-level `cli` (the repository root is on sys.path): that name belongs to any
    # installed distribution of it (see rl2f.toplevel).
    from rl2f.toplevel import give_way

    give_way(__name__, __file__)
