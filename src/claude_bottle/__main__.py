from claude_bottle.cli.entry import main

main()
