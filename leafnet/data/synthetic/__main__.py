"""`python -m leafnet.data.synthetic`: see `writer.main`."""

from leafnet.data.synthetic.writer import main

main()
