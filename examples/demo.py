"""`make demo` asks for the suggestion on the empty line inside fibonacci()."""


def fibonacci(n):
    """Return the n-th Fibonacci number."""
    


if __name__ == "__main__":
    print([fibonacci(i) for i in range(10)])
