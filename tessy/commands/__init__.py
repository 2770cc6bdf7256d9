"""The commands of `tessy`, one module each: `add_parser(sub)` adds its subparser, `run(args)` runs it
and returns the exit status. `tessy.cli` assembles them."""
