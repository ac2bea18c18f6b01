"""How the benches start `storeflow-ops` from a given tree: `python -c LAUNCH TREE ARGS...`.

It does what the installed entry point does (see [project.scripts]), with TREE first on
sys.path, so the process runs that tree's code, whatever is installed; a tree from before
console.cli.entry had main as its entry point."""

LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
          "import console.cli as c; raise SystemExit(getattr(c, 'entry', c.main)())")
