from vlm_app.cli import main

raise SystemExit(main())
