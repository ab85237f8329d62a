from mistwatch.cli import main

main()
