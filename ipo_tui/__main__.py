from ipo_tui.cli import main

main()
