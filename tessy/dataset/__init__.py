"""What is done with the records once written: look at them (`show`), compare datasets (`analysis`,
`plots`), choose what to publish (`filter`) and write it for trainers or the Hub (`export`, `card`)."""
