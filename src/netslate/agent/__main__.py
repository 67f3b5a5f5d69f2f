from netslate.agent.cli import main

raise SystemExit(main())
