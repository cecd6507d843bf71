from toolrec_local.cli import main

main()
