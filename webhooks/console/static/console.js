// Adds a "Copy" button after each element marked data-copy. The pages work
// without this script; it only saves selecting an ID by hand.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  if (!navigator.clipboard) {
    return;
  }
  for (const element of document.querySelectorAll("[data-copy]")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-button";
    button.textContent = "Copy";
    button.setAttribute("aria-label", `Copy ${element.textContent.trim()}`);
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(element.textContent.trim());
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
    element.after(button);
  }
});
