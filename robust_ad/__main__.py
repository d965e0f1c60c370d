from robust_ad.cli import main

main()
