"""The Kaggle side: downloading the data, submitting and reading the leaderboard."""
